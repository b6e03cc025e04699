// Preloaded with `node --require` in front of servers that cannot be told
// which address to bind (kinesis-local/kinesis-mock listens on 0.0.0.0 / ::):
// every TCP listen() that would bind a wildcard (or no) address is moved
// to 127.0.0.1, so nothing is reachable from outside this machine.
'use strict'
const net = require('net')
const LOOPBACK = '127.0.0.1'
const WILDCARD = new Set([undefined, null, '', '0.0.0.0', '::', '::0', '[::]'])
const origListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  const first = args[0]
  if (first !== null && typeof first === 'object' && !Array.isArray(first) && !(first instanceof net.Server)) {
    // listen(options[, cb]); a path/fd/handle listen is left alone
    if (first.path === undefined && first.fd === undefined && first._handle === undefined && first.handle === undefined && WILDCARD.has(first.host)) {
      args[0] = Object.assign({}, first, { host: LOOPBACK, ipv6Only: false })
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    // listen(port[, host][, backlog][, cb])
    if (typeof args[1] === 'string' || args[1] === undefined || args[1] === null) {
      if (WILDCARD.has(args[1])) args[1] = LOOPBACK
    } else {
      args.splice(1, 0, LOOPBACK)
    }
  }
  return origListen.apply(this, args)
}
