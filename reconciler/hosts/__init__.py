"""Talking to hosts: the HostClient seam, the SSH transport, host-key pinning."""
