"""DICOMweb gateway in front of DIMSE-only PACS."""

__version__ = "0.1.0"
