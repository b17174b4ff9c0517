"""The one metres <-> millimetres factor of the code base: mm = m * MM_PER_M, m = mm / MM_PER_M.

It lives in `losses` because `losses` never imports `utnet` while `utnet` imports `losses`: here both
can import it. Every conversion imports it from here; no other module writes the factor out
(tests/test_geometry.py checks that).
"""

MM_PER_M = 1000.0
