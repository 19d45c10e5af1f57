"""Shape-generation metrics the field reports: :mod:`.one_nna` (1-NNA with Chamfer and EMD, LION's Table 1)."""
