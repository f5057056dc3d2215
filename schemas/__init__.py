"""Wire and canonical forms shared by every part of tokex (msgspec Structs).

`schemas` imports nothing of ours; `ledger`, `market` and `ops` import it.
"""
