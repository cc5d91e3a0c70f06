// The Node etcd3 client's own election and lock recipes (lease + txn + watch, client side)
// against a Synod cluster: two candidates, the second waits until the first resigns;
// an observer sees both leaders; a lock serializes two critical sections.
const { Etcd3 } = require('etcd3');
const client = new Etcd3({ hosts: ['127.0.0.1:2379', '127.0.0.1:22379', '127.0.0.1:32379'] });
const fail = (why) => { console.error('FAIL: ' + why); process.exit(1); };
(async () => {
  const election = client.election('node-mayor', 5);
  const seen = [];
  const observer = await election.observe();
  observer.on('change', (leader) => seen.push(leader));
  const alice = election.campaign('alice');
  await alice.wait();
  if ((await election.leader()) !== 'alice') fail('alice should lead');
  const bob = election.campaign('bob');
  let bobLeads = false;
  bob.wait().then(() => { bobLeads = true; });
  await new Promise((r) => setTimeout(r, 1000));
  if (bobLeads) fail('bob must wait behind alice');
  await alice.proclaim('alice again');
  await alice.resign();
  await bob.wait();
  if ((await election.leader()) !== 'bob') fail('bob should lead after alice resigned');
  await new Promise((r) => setTimeout(r, 500));
  if (!seen.includes('alice again') || !seen.includes('bob')) fail('observer saw ' + JSON.stringify(seen));
  await bob.resign();
  await observer.cancel();
  // Locks (Node's is a try-lock): held, a second acquire fails; released, it succeeds.
  const held = await client.lock('node-lock').ttl(5).acquire();
  let refused = false;
  try { await client.lock('node-lock').ttl(5).acquire(); } catch (e) { refused = true; }
  if (!refused) fail('a second holder got a held lock');
  await held.release();
  const again = await client.lock('node-lock').ttl(5).acquire();
  await again.release();
  console.log('OK: election (observe, campaign, wait, proclaim, resign) and lock, observer saw ' + JSON.stringify(seen));
  client.close();
})().catch((e) => fail(e.stack || String(e)));
