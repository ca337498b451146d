"""DL/T 645 electricity meters (2007 and 1997 editions) on a shared serial bus or behind a serial device server."""
