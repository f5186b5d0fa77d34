"""Result and input storage: put, open, signed URLs."""
