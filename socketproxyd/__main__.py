"""
C{python -m socketproxyd}: the C{socketproxyd} command without its script.
"""

from .cli import main

main()
