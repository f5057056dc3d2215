"""The market's clearing: what trading does to the ledger, and the reports over it.

- `rules`: the posting rules (pure): the accounts of the market (cash, capacity,
  issuance, entitlement, escrow, fees, bank) and the balanced transaction of each
  market event (deposit, listing, order hold, fill, release, amend, delivery,
  window close, withdrawal).
- `reports`: settlement reports over the ledger's entries and the market's tables.
- `reports_api`: their HTTP routes (`/v1/reports/...`).
"""
