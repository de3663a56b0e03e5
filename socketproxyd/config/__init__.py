"""
What the command line configures: TARGET, routes, settings, time spans (no I/O).
"""
