"""CJ/T 188 household meters (water, gas, heat) on a shared serial bus."""
