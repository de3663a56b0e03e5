"""
The stream data path: accepting, the connection state machine and its pumps.
"""
