"""Everything that speaks DIMSE: the only package that imports pynetdicom."""
