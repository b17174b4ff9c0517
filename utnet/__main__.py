from utnet.cli import entry

entry()
