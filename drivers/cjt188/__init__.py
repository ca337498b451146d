"""CJ/T 188 household water and gas meters on a shared serial bus (heat meters not yet)."""
