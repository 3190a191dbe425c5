"""SMART Backend Services for the FHIR API: client registration, token endpoint, scopes.

A client (ApiClient) signs a JWT assertion (RS384 or ES384) with its private key; the
token endpoint checks it against the registered public key (PEM or JWKS), the audience
(the token URL), the expiry (at most 5 minutes ahead) and the jti (used once), and answers
a bearer token signed with SECRET_KEY (itsdangerous), valid 5 minutes, carrying the
granted scopes. Every FHIR call acts as workflow.Actor(client.user, client.program).
"""

import datetime as dt
import json
import re
import secrets

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from peewee import IntegrityError

from models import (
    API_EMAIL_DOMAIN,
    ROLE_GATEKEEPER,
    ApiAssertion,
    ApiClient,
    Membership,
    Program,
    User,
    transaction,
    utcnow,
)
from workflow import Actor, RuleViolation, record_audit

ALGORITHMS = ("RS384", "ES384")
TOKEN_SECONDS = 300
MAX_ASSERTION_SECONDS = 300
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_SALT = "connect-fhir-token"
RESOURCES = ("Patient", "Consent", "ServiceRequest", "Task", "Organization",
             "HealthcareService", "Subscription")
SCOPE_RE = re.compile(r"^system/(\*|[A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$")


class TokenError(Exception):
    """An OAuth error answer: error code, description, HTTP status."""

    def __init__(self, error, description, status=400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


# ---------------------------------------------------------------------------
# Scopes (SMART v2 `system/Task.rs`, v1 `system/Task.read` also understood)
# ---------------------------------------------------------------------------

def parse_scopes(text):
    """Valid scope strings of `text` (space-separated); RuleViolation names a bad one."""
    scopes = []
    for item in (text or "").split():
        if not SCOPE_RE.match(item):
            raise RuleViolation(f"Unknown scope {item!r}; use e.g. system/Task.rs or "
                                "system/ServiceRequest.c.", 422)
        resource = item.split("/")[1].split(".")[0]
        if resource != "*" and resource not in RESOURCES:
            raise RuleViolation(f"The API has no {resource} resource.", 422)
        scopes.append(item)
    return scopes


def scope_letters(scope):
    perms = scope.split(".", 1)[1]
    return {"read": "rs", "write": "cud", "*": "cruds"}.get(perms, perms)


def allows(scopes, resource, letter):
    """Whether one of the scopes grants `letter` (c r u d s) on `resource`."""
    for scope in scopes:
        name = scope.split("/")[1].split(".")[0]
        if name in ("*", resource) and letter in scope_letters(scope):
            return True
    return False


# ---------------------------------------------------------------------------
# Registration (CLI and tests)
# ---------------------------------------------------------------------------

def load_key_material(text):
    """A public key from PEM or a JWKS (JSON); raises ValueError when neither."""
    import jwt  # lazy: keeps the app's start-up fast

    text = (text or "").strip()
    if text.startswith("{"):
        data = json.loads(text)
        keys = data.get("keys", [data])
        if not keys:
            raise ValueError("The JWKS has no keys.")
        return {key.get("kid", ""): jwt.PyJWK(key).key for key in keys}
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    return {"": load_pem_public_key(text.encode())}


def actor_for(client, ip=""):
    """The client's account acting as a gatekeeper of its program. The role is given to
    this request's user object only (no Membership row): the account never appears in
    staff lists, is never notified by email and can never be assigned a referral."""
    user = client.user
    user.__dict__.setdefault("_roles_cache", {})[client.program_id] = {ROLE_GATEKEEPER}
    actor = Actor(user, client.program, ip)
    actor.api_client = client
    return actor


def register_client(program, public_key, scopes, name="", client_id=None, provider=None):
    """A client acting for `program` through a new sign-in-less account; `provider` (a
    provider or gatekeeper of the program) is assigned when the client accepts a referral
    without naming one. Returns the ApiClient; its client_id goes into the assertions."""
    import jwt  # lazy: keeps the app's start-up fast

    if not program.active:
        raise RuleViolation("This program is not active.", 422)
    try:
        load_key_material(public_key)
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise RuleViolation(f"The public key is not a PEM public key or a JWKS: {exc}", 422) from None
    granted = parse_scopes(scopes)
    if not granted:
        raise RuleViolation("Give at least one scope, e.g. \"system/Task.rs system/ServiceRequest.c\".", 422)
    if provider is not None and not Membership.select().where(
            (Membership.user == provider) & (Membership.program == program)).exists():
        raise RuleViolation("The designated provider must be a member of the program.", 422)
    client_id = client_id or f"connect-{secrets.token_hex(8)}"
    name = (name or f"API client of {program.name}").strip()[:200]
    with transaction():
        user = User.create(email=f"{client_id}{API_EMAIL_DOMAIN}", name=name, password_hash=None,
                           must_change_password=False)
        client = ApiClient.create(client_id=client_id, name=name, program=program, user=user,
                                  provider=provider, public_key=public_key.strip(),
                                  scopes=" ".join(granted))
        record_audit(None, "register_api_client", client, detail=f"program {program.id}: "
                     + " ".join(granted))
    return client


def register_cli(app):
    import click

    from models import database

    @app.cli.command("register-api-client")
    @click.option("--program", "program_id", required=True, type=int, help="The program's id.")
    @click.option("--public-key", "key_file", required=True, type=click.Path(exists=True),
                  help="PEM public key or JWKS JSON file.")
    @click.option("--scopes", required=True, help='e.g. "system/Task.rs system/ServiceRequest.c"')
    @click.option("--name", default="", help="What to call the client in the audit log.")
    @click.option("--provider", "provider_email", default="",
                  help="Email of the provider assigned when the client accepts without naming one.")
    def register_api_client(program_id, key_file, scopes, name, provider_email):
        """Register a FHIR API client (SMART Backend Services) for one program."""
        with database.connection_context():
            program = Program.get_or_none(Program.id == program_id)
            if program is None:
                raise click.ClickException(f"No program {program_id}.")
            with open(key_file) as handle:
                key = handle.read()
            provider = None
            if provider_email:
                provider = User.get_or_none(User.email == provider_email.strip().lower())
                if provider is None:
                    raise click.ClickException(f"No user {provider_email}.")
            try:
                client = register_client(program, key, scopes, name=name, provider=provider)
            except RuleViolation as exc:
                raise click.ClickException(exc.message) from exc
        click.echo(f"client_id: {client.client_id}")
        click.echo(f"token URL: {app.config['BASE_URL']}/fhir/token")


# ---------------------------------------------------------------------------
# Token endpoint
# ---------------------------------------------------------------------------

def _serializer(secret_key):
    return URLSafeTimedSerializer(secret_key, salt=TOKEN_SALT)


def issue_token(form, token_url, secret_key, ip=""):
    """The token answer for a client_credentials request, or TokenError."""
    import jwt  # lazy: keeps the app's start-up fast

    if form.get("grant_type") != "client_credentials":
        raise TokenError("unsupported_grant_type", "Use grant_type=client_credentials.")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise TokenError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}.")
    assertion = form.get("client_assertion") or ""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("invalid_client", "The client assertion is not a JWT.", 401) from None
    client = ApiClient.get_or_none((ApiClient.client_id == str(claims.get("iss", ""))[:100])
                                   & ApiClient.active)
    if client is None or header.get("alg") not in ALGORITHMS:
        raise TokenError("invalid_client", "Unknown client or unsupported algorithm "
                         "(use RS384 or ES384).", 401)
    actor = actor_for(client, ip)
    try:
        claims = _verify(assertion, header, client, token_url)
        requested = parse_scopes(form.get("scope", "")) if form.get("scope") else None
    except TokenError as exc:
        with transaction():
            record_audit(actor, "fhir_token", client, outcome="denied", detail=exc.description)
        raise
    except RuleViolation as exc:
        raise TokenError("invalid_scope", exc.message) from None
    registered = client.scopes.split()
    granted = registered if requested is None else [
        s for s in requested if all(allows(registered, s.split("/")[1].split(".")[0], letter)
                                    for letter in scope_letters(s))]
    if not granted:
        raise TokenError("invalid_scope", "None of the requested scopes is registered for this client.")
    expires = dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).replace(tzinfo=None)
    try:
        with transaction():
            ApiAssertion.delete().where(ApiAssertion.expires_at < utcnow()).execute()
            ApiAssertion.create(client=client, jti=str(claims["jti"])[:200], expires_at=expires)
            record_audit(actor, "fhir_token", client, detail=" ".join(granted))
    except IntegrityError:
        with transaction():
            record_audit(actor, "fhir_token", client, outcome="denied", detail="jti replayed")
        raise TokenError("invalid_client", "This assertion was already used (jti replay).", 401) from None
    token = _serializer(secret_key).dumps({"c": client.id, "s": granted})
    return {"access_token": token, "token_type": "bearer", "expires_in": TOKEN_SECONDS,
            "scope": " ".join(granted)}


def _verify(assertion, header, client, token_url):
    import jwt  # lazy: keeps the app's start-up fast

    keys = load_key_material(client.public_key)
    key = keys.get(header.get("kid", "")) or (next(iter(keys.values())) if len(keys) == 1 else None)
    if key is None:
        raise TokenError("invalid_client", "No registered key has this kid.", 401)
    try:
        claims = jwt.decode(assertion, key, algorithms=list(ALGORITHMS), audience=token_url,
                            issuer=client.client_id,
                            options={"require": ["iss", "sub", "aud", "exp", "jti"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("invalid_client", "The client assertion has expired.", 401) from None
    except jwt.InvalidAudienceError:
        raise TokenError("invalid_client", f"The assertion's aud must be {token_url}.", 401) from None
    except jwt.PyJWTError as exc:
        raise TokenError("invalid_client", f"The client assertion was refused: {exc}.", 401) from None
    if claims["sub"] != client.client_id:
        raise TokenError("invalid_client", "The assertion's sub must be the client_id.", 401)
    if claims["exp"] > utcnow().replace(tzinfo=dt.timezone.utc).timestamp() + MAX_ASSERTION_SECONDS + 30:
        raise TokenError("invalid_client", "The assertion's exp is more than 5 minutes ahead.", 401)
    return claims


def client_for_token(token, secret_key):
    """(ApiClient, granted scopes) of a live bearer token, or None."""
    try:
        data = _serializer(secret_key).loads(token or "", max_age=TOKEN_SECONDS)
    except (SignatureExpired, BadSignature):
        return None
    client = ApiClient.get_or_none((ApiClient.id == data.get("c")) & ApiClient.active)
    if client is None or not client.user.is_active or not client.program.active:
        return None
    return client, list(data.get("s") or [])
