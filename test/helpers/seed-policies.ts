// The README's groups example (cliff and rob share 30 Mbit/s with 15 guaranteed each, jason has 30 on his
// own, all under a 1000 Mbit/s host ceiling), as the tests that run it on real devices use it.
/** The host ceiling and its web group (30 Mbit/s, 15 guaranteed per member), whose members each file picks. */
const HOST_AND_WEB = `
groups:
  - name: host
    inbound: { average: 1000mbit }
    outbound: { average: 1000mbit }
  - name: web
    parent: host
    inbound: { average: 30mbit }
    outbound: { average: 30mbit }
    memberDefaults:
      inbound: { floor: 15mbit }
      outbound: { floor: 15mbit }
`;

export const SEED_001_GROUPS = `${HOST_AND_WEB}    select: { domains: ["cliff*", "rob*"] }
  - name: solo
    parent: host
    inbound: { average: 30mbit }
    outbound: { average: 30mbit }
    members: [{ domain: jason }]
`;

/** The README's host/web groups with one named member (beta), for tests that need a group member and others. */
export const WEB_MEMBER_BETA = `${HOST_AND_WEB}    members: [{ domain: beta }]
`;
