"""QIDO-RS searches answered over C-FIND, emulating what the PACS cannot do."""
