"""FHIR: ImagingStudy and Endpoint resources built from the PACS, served and published."""
