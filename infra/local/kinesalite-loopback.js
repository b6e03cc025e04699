#!/usr/bin/env node
// Runs kinesalite (in-memory) bound to 127.0.0.1 only: its own CLI always
// listens on every interface. Started by infra/local/up.
// Usage: NODE_PATH=<dir holding kinesalite> node kinesalite-loopback.js <port> [createStreamMs] [updateStreamMs]
'use strict'
const port = parseInt(process.argv[2] || '4567', 10)
const createStreamMs = parseInt(process.argv[3] || '0', 10)
const updateStreamMs = parseInt(process.argv[4] || '500', 10)
const kinesalite = require('kinesalite')
const server = kinesalite({
  createStreamMs,
  deleteStreamMs: createStreamMs,
  updateStreamMs,
  // Every test makes streams of its own and never deletes them (the server
  // keeps them in memory until it stops): a server that `infra/local/up`
  // reuses across many runs would reach AWS's default account limit of 100
  // shards after a few of them.
  shardLimit: 100000,
})
server.on('error', (err) => {
  console.error('kinesalite: ' + (err.stack || err))
  process.exit(1)
})
server.listen(port, '127.0.0.1', () => {
  const a = server.address()
  console.log('kinesalite listening at http://%s:%s (createStreamMs=%d updateStreamMs=%d)', a.address, a.port, createStreamMs, updateStreamMs)
})
// Everything is in memory: nothing to flush, so stop at once.
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
