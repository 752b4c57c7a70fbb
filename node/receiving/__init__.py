"""Receiving: the C-STORE listener, its admission and transport guards, and the checks every instance passes before Success."""
