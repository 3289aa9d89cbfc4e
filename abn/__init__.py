"""The ABN shim: Available Bandwidth Notification on a middlebox (the ABN paper).

Pure parts, no root and no I/O, each the reference a compiled path is tested against:
`options` (the TCP option codec and the ACK rewriter), `flows` (the flow table, the
paper's Table 1, with per-period accounting), `allocators` (Algorithm 1 and the
interface later allocators plug into). `_nfqloop` is the compiled NFQUEUE loop.
"""
