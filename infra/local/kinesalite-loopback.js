#!/usr/bin/env node
// Starts kinesalite bound to 127.0.0.1 only (its own CLI listens on every
// interface). Usage: node kinesalite-loopback.js <port> [createStreamMs] [updateStreamMs]
// NODE_PATH must point at the node_modules folder holding kinesalite.
'use strict'
const port = parseInt(process.argv[2] || '4567', 10)
const createStreamMs = parseInt(process.argv[3] || '0', 10)
const updateStreamMs = parseInt(process.argv[4] || '0', 10)
const kinesalite = require('kinesalite')
const server = kinesalite({
  createStreamMs,
  deleteStreamMs: createStreamMs,
  updateStreamMs,
  shardLimit: 100,
})
server.listen(port, '127.0.0.1', () => {
  const a = server.address()
  console.log('kinesalite listening at http://%s:%s', a.address, a.port)
})
const stop = () => server.close(() => process.exit(0))
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
