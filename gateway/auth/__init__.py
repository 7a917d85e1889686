"""Access control: OAuth2 / SMART bearer tokens, patient-bound access, CORS and the audit trail."""
