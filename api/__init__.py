"""Open standards spoken by CONNECT: the directory in HSDS 3.0 (hsds.py, hsds_import.py).

The FHIR R4 referral API will live beside them (fhir.py). Each module maps our rows to the
standard's shapes and back; changes still go through models.transaction() and audit rows.
"""
