"""The gateway: providers' inference endpoints, buyers' inference keys (issue 13).

`ssrf` checks where an endpoint may point, `health` probes endpoints, `endpoints` and
`keys` store them (configuration, written directly like accounts, not ledger state),
`endpoints_api` and `keys_api` are their routes.
"""
