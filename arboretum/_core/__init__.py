"""The supervision kernel. Depends on trio and the standard library only."""
