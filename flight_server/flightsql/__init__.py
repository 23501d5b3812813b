"""Flight SQL protocol support."""
