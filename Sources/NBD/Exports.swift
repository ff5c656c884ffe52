// The protocol's numbers live in NBDProtocol, which the kernel attach helper
// (NBDAttach) shares without the server; users of NBD see them as before.
@_exported public import NBDProtocol
