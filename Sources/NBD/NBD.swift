// NBD: the server side of the Network Block Device protocol (fixed
// newstyle; doc/proto.md of the NetworkBlockDevice project), serving any
// BlockDevice. It knows nothing of compression or pools.
//
// THE MAP
//
// Pure protocol code: no sockets, no threads; the tests drive it directly.
//   Protocol.swift          the specification's numbers: magics, options,
//                           flags, commands, reply types, errnos
//   Export.swift            what is served: name, device, read-only, limits,
//                           and the transmission flags that follow from them
//   FrameParser.swift       cuts the client's bytes into handshake messages
//                           and requests; skips payloads over the limit so
//                           the stream stays in step
//   Handshake.swift         option negotiation as a state machine: a message
//                           in, reply bytes and an outcome out
//   RequestProcessor.swift  checks one request against the export and the
//                           session, runs it on the device, encodes the reply
//   ConnectionStateMachine.swift  one connection's life as a value: phase
//                           (handshake, transmission, closing, closed), input
//                           (open, ended, disconnected), drain, back-pressure;
//                           events in, actions out
//
// SwiftNIO and threads: the only code that touches sockets or starts threads.
//   Server.swift            listeners (Unix socket, TCP), the event loops,
//                           the write workers; drain and shutdown
//   ConnectionHandler.swift one connection on a channel: feeds the state
//                           machine its events and performs its actions
//                           (writes, flushes in batches, requests run here or
//                           on the workers, reads held, timers, the close)
//   WorkerThreads.swift     the named threads that run writes and large
//                           requests, from one FIFO queue
//   ConnectionWork.swift    a connection's share of the workers: the jobs it
//                           hands them and the results they hand back
//   InFlightBudget.swift    the bytes all connections may hold at once
//   ServerFigures.swift     the server's figures, and per-command counters
//                           (sharded per CPU)
//
// THREADS
//   Event loops (one per core): every connection lives on one loop, which
//   parses, negotiates, runs small reads, trims, zeroings, flushes and block
//   status on the device, and writes every reply.
//   Workers (WorkerThreads, `znbd-worker`, one per core): run
//   writes (where a compressing device spends its time) and any request
//   over the inline limit. The loop hands over all a pass parsed under one
//   lock; results come back to the connection's loop, which takes them in
//   batches (one wake-up, one flush for many).
//
// MEMORY
//   A request counts against its connection's budget and the server's from
//   parsing until its reply has been handed to the socket, so a client that
//   stops reading stops being read from; ConnectionStateMachine.swift says
//   how.
//   The device's own locks are taken inside device calls, on whichever of
//   these threads runs them (docs/ARCHITECTURE.md has the table). The
//   server's own state is per connection, touched only on its loop, except
//   ConnectionWork's results (a mutex shared with the workers); the list of
//   channels for shutdown is behind a NIOLockedValueBox.
