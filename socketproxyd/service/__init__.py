"""
The application: the MultiService and its one-job services.
"""
