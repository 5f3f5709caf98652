// Checks waitroom admission tokens offline, as a booking service in Node
// would: the keys come from waitroom's JWKS endpoint and are cached; a token
// signed with a key not seen yet (a rotation) makes the set fetch them again.
//
//   npm install jose
//   node verify.mjs http://waitroom:8080/.well-known/jwks.json sale TOKEN...
//
// The checks that matter: `aud` is the queue id (a token for another queue
// is refused), `iss` is waitroom's --token-issuer, `exp` has not passed, and
// the algorithm is EdDSA only. Offline checks cannot tell a token already
// used: record `jti` with the purchase (a UNIQUE column), or ask waitroom
// (`VerifyAdmission` with `consume`).

import { createRemoteJWKSet, jwtVerify } from 'jose';

export function verifier(jwksUrl, issuer = 'waitroom') {
  // Caches the keys; an unknown `kid` fetches them again (at most every 30 s).
  const keys = createRemoteJWKSet(new URL(jwksUrl));
  return async (token, queue) => {
    const { payload } = await jwtVerify(token, keys, {
      issuer,
      audience: queue,
      algorithms: ['EdDSA'],
      clockTolerance: 5,
      requiredClaims: ['exp', 'iat', 'sub', 'jti'],
    });
    return payload;
  };
}

const [jwksUrl, queue, ...tokens] = process.argv.slice(2);
const verify = verifier(jwksUrl);
let refused = 0;
for (const token of tokens) {
  try {
    const claims = await verify(token, queue);
    console.log(`VALID ${claims.sub} ${claims.jti}`);
  } catch (error) {
    refused += 1;
    console.log(`REFUSED ${error.code ?? error.name}: ${error.message}`);
  }
}
process.exit(refused ? 1 : 0);
