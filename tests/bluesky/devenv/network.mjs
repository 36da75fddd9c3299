// Starts the reference atproto network (@atproto/dev-env TestNetwork: PLC, PDS, AppView, ...)
// for the bluesky face tests, and keeps it running until stdin closes.
//
// Needs DB_POSTGRES_URL and REDIS_HOST in the environment (the pytest fixture starts both).
// When ready it prints ONE line of JSON to stdout:
//   {"pds": "http://localhost:N", "appview": "http://localhost:M", "plc": "...", "control": "..."}
// `control` is a tiny HTTP endpoint on 127.0.0.1:
//   POST /process-all  -> waits until the AppView has indexed everything the PDS has emitted
//                         (network.processAll()), then answers 200 {"ok": true}
// Everything else goes to stderr. Closing stdin (the test process ending) shuts the network down.
import http from 'node:http'
import { TestNetwork } from '@atproto/dev-env'

const log = (...args) => console.error('[devenv]', ...args)

const started = Date.now()
const network = await TestNetwork.create({
  dbPostgresSchema: process.env.DB_POSTGRES_SCHEMA || 'plaudit',
})
log(`network up in ${Date.now() - started} ms`)

// processAll must not run twice at once (the subscription is not re-entrant): chain the calls.
let queue = Promise.resolve()
const processAll = () => {
  const run = queue.then(() => network.processAll(10_000))
  queue = run.catch(() => {})
  return run
}

const control = http.createServer((req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
  if (req.method === 'POST' && req.url === '/process-all') {
    processAll().then(
      () => reply(200, { ok: true }),
      (err) => reply(500, { ok: false, error: String(err && err.stack ? err.stack : err) }),
    )
    return
  }
  reply(404, { ok: false, error: `unknown control call ${req.method} ${req.url}` })
})
await new Promise((resolve) => control.listen(0, '127.0.0.1', resolve))

let closing = false
const shutdown = async (why) => {
  if (closing) return
  closing = true
  log(`shutting down (${why})`)
  control.close()
  try {
    await network.close()
  } catch (err) {
    log('error while closing the network:', err)
  }
  process.exit(0)
}
process.stdin.on('end', () => shutdown('stdin closed'))
process.stdin.resume()
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))

process.stdout.write(
  JSON.stringify({
    pds: network.pds.url,
    appview: network.bsky.url,
    plc: network.plc.url,
    control: `http://127.0.0.1:${control.address().port}`,
  }) + '\n',
)
