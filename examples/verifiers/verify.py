"""Checks waitroom admission tokens offline, as a booking service in Python
would: the keys come from waitroom's JWKS endpoint and are cached; a token
signed with a key not seen yet (a rotation) makes the client fetch them
again.

    pip install "PyJWT[crypto]>=2.8"
    python verify.py http://waitroom:8080/.well-known/jwks.json sale TOKEN...

The checks that matter: `aud` is the queue id (a token for another queue
is refused), `iss` is waitroom's --token-issuer, `exp` has not passed, and
the algorithm is EdDSA only. Offline checks cannot tell a token already
used: record `jti` with the purchase (a UNIQUE column), or ask waitroom
(`VerifyAdmission` with `consume`).
"""

import sys

import jwt


class Verifier:
    def __init__(self, jwks_url: str, issuer: str = "waitroom"):
        # Caches the keys; an unknown `kid` fetches them again.
        self.keys = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300)
        self.issuer = issuer

    def verify(self, token: str, queue: str) -> dict:
        """The token's claims, or `jwt.InvalidTokenError` saying why not."""
        key = self.keys.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key.key,
            algorithms=["EdDSA"],
            audience=queue,
            issuer=self.issuer,
            leeway=5,
            options={"require": ["exp", "iat", "aud", "iss", "sub", "jti"]},
        )


def main(argv: list[str]) -> int:
    jwks_url, queue, *tokens = argv
    verifier = Verifier(jwks_url)
    refused = 0
    for token in tokens:
        try:
            claims = verifier.verify(token, queue)
            print(f"VALID {claims['sub']} {claims['jti']}")
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as error:
            refused += 1
            print(f"REFUSED {type(error).__name__}: {error}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
