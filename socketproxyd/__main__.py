"""
C{python -m socketproxyd}: the C{socketproxyd} command without its script.
"""

from socketproxyd.cli import main

main()
