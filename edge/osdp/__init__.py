"""OSDP v2 (IEC 60839-11-5) control panel for RS-485 badge readers.

``packet`` is the pure wire layer, ``secure`` the Secure Channel crypto (both stdlib + cryptography, no I/O),
``cp`` the control panel that owns one serial bus and polls every reader on it.
"""
