"""The WeChat Official Account channel: the platform's "server configuration" callback.

WeChat talks to one URL, `/channels/wechat`:

- **GET** verifies the URL when the operator saves it in the console: the query carries
  `signature`, `timestamp`, `nonce` and `echostr`; `signature` is the SHA-1 of the sorted
  [token, timestamp, nonce] joined together, and a good one is answered with `echostr` as plain
  text.
- **POST** delivers a customer's message as XML. In plaintext mode the query's `signature` is
  checked the same way. In safe mode (`encrypt_type=aes`, the console's "安全模式") the body is
  `<xml><ToUserName/><Encrypt/></xml>`, the query's `msg_signature` is the SHA-1 of the sorted
  [token, timestamp, nonce, Encrypt], and Encrypt is AES-256-CBC (key = base64 of the 43-character
  EncodingAESKey + "=", IV = the key's first 16 bytes, PKCS#7 padding to 32-byte blocks) over
  16 random bytes + the XML's length (4 bytes, big-endian) + the XML + the AppId. Replies in safe
  mode are encrypted the same way and wrapped with their own signature.

What a customer gets back, as a passive reply (the HTTP response itself):

- a text message → the assistant's answer (a voice message with WeChat's speech recognition
  switched on counts as text: its `Recognition` field is the text);
- any other message (image, video, location, link, file...) → a short note, in Chinese and
  English, that only text is read for now;
- the `subscribe` event → the project's greeting; any other event → "success", the platform's
  documented "no reply".

Timing and retries. WeChat waits 5 seconds for an answer, then drops the connection and retries
the same message (same MsgId) up to three times. Two promises follow from that, and the service
behind `app.state.service.channel_reply` keeps both:

- retries are de-duplicated by MsgId (`channel_message_id`): a retried message is neither stored
  twice nor answered twice; the retry gets the same reply as the first delivery;
- the service call carries a deadline (`reply_deadline_s`, 4.5 s by default, safely inside the
  5 s). When the answer is not ready by then, the service returns a short holding reply at once,
  keeps working, stores the answer when it is ready, and delivers it with its reply to the
  customer's next message. A passive reply is the only way to answer without the (paid,
  verified-account) customer-service message API, so a late answer has to wait for the next turn.

Why the protocol is written out here rather than taken from wechatpy: its crypto asserts the key
length (stripped under `python -O`), draws the random prefix from `random` rather than `secrets`,
and turns a wrong key or an altered message into a bare struct/Unicode error instead of one a
person can act on. The protocol is a few short functions over `cryptography` and `pyexpat`;
the tests check it against the platform's documentation and against wechatpy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import string
import struct
import time
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import Field, ValidationError, field_validator, model_validator

from kefu.config import StrictModel
from kefu.errors import KefuError
from kefu.serve.security import APIError

PATH = "/channels/wechat"
NO_REPLY = "success"
TEXT_ONLY_REPLY = (
    "抱歉，我目前只能阅读文字消息，请用文字描述您的问题。\n"
    "Sorry, for now I can only read text messages. Please type your question."
)
ENV_VARS = {
    "token": "KEFU_WECHAT_TOKEN",
    "app_id": "KEFU_WECHAT_APP_ID",
    "encoding_aes_key": "KEFU_WECHAT_AES_KEY",
    "reply_deadline_s": "KEFU_WECHAT_REPLY_DEADLINE_S",
}
AES_KEY_CHARS = 43
PKCS7_BLOCK_BYTES = 32  # WeChat pads to 32 bytes, not AES's 16
RANDOM_PREFIX_BYTES = 16
# XML 1.0 forbids these control characters; a generated answer must never make the reply unreadable.
_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class WeChatError(APIError):
    """A callback WeChat (or someone pretending to be WeChat) sent that cannot be accepted; the
    app answers it like any APIError, as a JSON error with the request id.

    `code` is a stable machine-readable name ("invalid_signature"), `param` the query parameter
    or XML field at fault; 400 for a malformed callback, 403 for one that is not authentic.
    """

    def __init__(
        self, message: str, *, code: str, status_code: int = 400, param: str | None = None
    ) -> None:
        # A forbidden request is named by what failed; malformed ones share OpenAI's type.
        kind = code if status_code == 403 else "invalid_request_error"
        super().__init__(status_code, message, kind, param, code)

    @property
    def status_code(self) -> int:
        return self.status


class WeChatConfig(StrictModel):
    """The Official Account's "server configuration", as set in the WeChat console."""

    token: str = Field(
        description="The Token from the console (3-32 characters); signs every callback."
    )
    app_id: str = Field("", description="The account's AppId (wx...); required for safe mode.")
    encoding_aes_key: str | None = Field(
        None,
        description="The 43-character EncodingAESKey; set it to accept safe-mode (encrypted) callbacks.",
    )
    reply_deadline_s: float = Field(
        4.5, gt=0, lt=5, description="Seconds to wait for an answer before a holding reply."
    )

    @field_validator("token")
    @classmethod
    def _token_shape(cls, value: str) -> str:
        # The console asks for letters and digits; visible ASCII is accepted so that a Token with
        # a dash still works, but spaces (a copy-paste slip) and non-ASCII are refused.
        if not re.fullmatch(r"[\x21-\x7e]{3,32}", value):
            raise ValueError(
                "the WeChat Token must be 3 to 32 ASCII letters, digits or punctuation without "
                "spaces, exactly as in the console"
            )
        return value

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_key_shape(cls, value: str | None) -> str | None:
        if value is not None:
            aes_key(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="after")
    def _safe_mode_needs_app_id(self) -> WeChatConfig:
        if self.encoding_aes_key is not None and not self.app_id:
            raise ValueError(
                "safe mode (encoding_aes_key) needs app_id: every encrypted message ends with "
                "the AppId, and a message for another account must be refused"
            )
        return self

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WeChatConfig | None:
        """Read KEFU_WECHAT_* variables; None when KEFU_WECHAT_TOKEN is unset (channel off)."""
        environ = dict(os.environ) if environ is None else environ
        values: dict[str, Any] = {
            name: environ[var] for name, var in ENV_VARS.items() if environ.get(var)
        }
        if "token" not in values:
            return None
        try:
            return cls(**values)
        except ValidationError as error:
            problems = "; ".join(f"{_env_name(e['loc'])}: {e['msg']}" for e in error.errors())
            raise KefuError(f"WeChat channel settings are invalid: {problems}") from None

    @property
    def safe_mode(self) -> bool:
        return self.encoding_aes_key is not None


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_VARS.get(str(loc[0]), "KEFU_WECHAT_*") if loc else "KEFU_WECHAT_*"


# ---- signatures ---------------------------------------------------------------------------------


def sign(*parts: str) -> str:
    """WeChat's signature: SHA-1 (hex) of the parts sorted as strings and joined."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def verify_signature(given: str, *parts: str, param: str = "signature") -> None:
    """Raise a 403 WeChatError unless `given` is the signature of `parts`."""
    # compare_digest: a timing difference must not reveal how much of a forged signature matched.
    if not hmac.compare_digest(sign(*parts).encode(), given.encode("utf-8")):
        raise WeChatError(
            f"the {param} does not match: the request is not from WeChat, or the server's Token "
            "(KEFU_WECHAT_TOKEN) differs from the one in the WeChat console",
            code="invalid_signature",
            status_code=403,
            param=param,
        )


# ---- safe-mode encryption ---------------------------------------------------------------------


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key behind a 43-character EncodingAESKey (ValueError if malformed)."""
    if len(encoding_aes_key) != AES_KEY_CHARS:
        raise ValueError(
            f"the EncodingAESKey must be {AES_KEY_CHARS} characters, got {len(encoding_aes_key)}; "
            "copy it from the WeChat console's server configuration"
        )
    try:
        return base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error:
        raise ValueError(
            "the EncodingAESKey must be letters and digits only (base64); copy it from the console"
        ) from None


def _cipher(key: bytes) -> Cipher:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def encrypt(xml: str, *, key: bytes, app_id: str, random_prefix: bytes | None = None) -> str:
    """Encrypt a message for WeChat: base64(AES-CBC(random16 + len + xml + AppId, PKCS#7/32)).

    Args:
        random_prefix: the 16 leading bytes; random unless a test pins them.
    """
    if random_prefix is None:
        # Letters and digits as in the platform's own samples, drawn from a secure source.
        alphabet = string.ascii_letters + string.digits
        random_prefix = "".join(secrets.choice(alphabet) for _ in range(16)).encode()
    body = xml.encode("utf-8")
    plain = random_prefix + struct.pack(">I", len(body)) + body + app_id.encode("utf-8")
    padder = padding.PKCS7(PKCS7_BLOCK_BYTES * 8).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = _cipher(key).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def _decrypt_failed(why: str) -> WeChatError:
    return WeChatError(
        f"cannot decrypt the message: {why}. The EncodingAESKey (KEFU_WECHAT_AES_KEY) may differ "
        "from the console's, or the message was altered",
        code="decrypt_failed",
        param="Encrypt",
    )


def decrypt(encrypted: str, *, key: bytes, app_id: str) -> str:
    """The XML inside a safe-mode Encrypt field; WeChatError if it is damaged or for another AppId."""
    try:
        data = base64.b64decode(encrypted, validate=True)
    except binascii.Error:
        raise _decrypt_failed("the Encrypt field is not base64") from None
    if not data or len(data) % 16:
        raise _decrypt_failed(f"{len(data)} bytes of ciphertext is not a whole number of blocks")
    decryptor = _cipher(key).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(PKCS7_BLOCK_BYTES * 8).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise _decrypt_failed("the padding is wrong after decryption") from None
    header = RANDOM_PREFIX_BYTES + 4
    if len(plain) < header:
        raise _decrypt_failed("the decrypted message is too short")
    (length,) = struct.unpack(">I", plain[RANDOM_PREFIX_BYTES:header])
    if header + length > len(plain):
        raise _decrypt_failed(f"the length field says {length} bytes but fewer follow")
    sender = plain[header + length :]
    if not hmac.compare_digest(sender, app_id.encode("utf-8")):
        shown = sender.decode("utf-8", errors="replace")[:40]
        raise WeChatError(
            f"the message is addressed to AppId {shown!r} but this server is configured for "
            f"{app_id!r} (KEFU_WECHAT_APP_ID)",
            code="invalid_app_id",
            status_code=403,
            param="Encrypt",
        )
    try:
        return plain[header : header + length].decode("utf-8")
    except UnicodeDecodeError:
        raise _decrypt_failed("the decrypted message is not UTF-8") from None


def open_envelope(
    body: bytes, *, config: WeChatConfig, msg_signature: str, timestamp: str, nonce: str
) -> str:
    """Check a safe-mode body's msg_signature and return the message XML inside it."""
    fields = parse_xml(body)
    encrypted = fields.get("Encrypt")
    if not encrypted:
        raise WeChatError(
            "safe mode (encrypt_type=aes) but the body has no <Encrypt> element",
            code="invalid_xml",
            param="Encrypt",
        )
    verify_signature(
        msg_signature, config.token, timestamp, nonce, encrypted, param="msg_signature"
    )
    return decrypt(encrypted, key=_config_key(config), app_id=config.app_id)


def seal(xml: str, *, config: WeChatConfig, timestamp: str, nonce: str) -> str:
    """Wrap a reply for safe mode: <xml> with Encrypt, MsgSignature, TimeStamp and Nonce."""
    encrypted = encrypt(xml, key=_config_key(config), app_id=config.app_id)
    signature = sign(config.token, timestamp, nonce, encrypted)
    return (
        f"<xml><Encrypt>{_cdata(encrypted)}</Encrypt>"
        f"<MsgSignature>{_cdata(signature)}</MsgSignature>"
        f"<TimeStamp>{timestamp}</TimeStamp><Nonce>{_cdata(nonce)}</Nonce></xml>"
    )


def _config_key(config: WeChatConfig) -> bytes:
    if config.encoding_aes_key is None:
        raise WeChatError(
            "the request uses safe mode (encrypt_type=aes) but this server has no EncodingAESKey; "
            "set KEFU_WECHAT_AES_KEY or switch the console to plaintext mode",
            code="safe_mode_not_configured",
            param="encrypt_type",
        )
    return aes_key(config.encoding_aes_key)


# ---- XML ----------------------------------------------------------------------------------------


class _FlatXML:
    """Collects the leaf elements under <xml> into {tag: text}; the first of a repeated tag wins.

    WeChat's messages are flat apart from a few event details (ScanCodeInfo, SendPicsInfo) that
    the assistant does not read, so a flat dict is the whole model.
    """

    def __init__(self) -> None:
        self.root: str | None = None
        self.fields: dict[str, str] = {}
        self._stack: list[tuple[str, list[str], list[bool]]] = []  # tag, text, has children

    def start(self, tag: str, _attrs: dict[str, str]) -> None:
        if self._stack:
            self._stack[-1][2][0] = True
        else:
            self.root = tag
        self._stack.append((tag, [], [False]))

    def end(self, _tag: str) -> None:
        tag, text, has_children = self._stack.pop()
        if self._stack and not has_children[0]:
            self.fields.setdefault(tag, "".join(text))

    def text(self, data: str) -> None:
        if self._stack:
            self._stack[-1][1].append(data)


def _refuse_doctype(*_args: object) -> None:
    # No DOCTYPE means no entity declarations: no "billion laughs", no external entities.
    raise WeChatError(
        "XML with a DOCTYPE is refused (WeChat never sends one)", code="invalid_xml", param=None
    )


def parse_xml(body: bytes | str) -> dict[str, str]:
    """The fields of a WeChat `<xml>` document; WeChatError (400) if it is not one."""
    collector = _FlatXML()
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.StartElementHandler = collector.start
    parser.EndElementHandler = collector.end
    parser.CharacterDataHandler = collector.text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as error:
        raise WeChatError(
            f"the body is not well-formed XML: {expat.ErrorString(error.code)} "
            f"at line {error.lineno}, column {error.offset}",
            code="invalid_xml",
        ) from None
    if collector.root != "xml":
        raise WeChatError(
            f"the root element must be <xml>, got <{collector.root}>", code="invalid_xml"
        )
    return collector.fields


@dataclass(frozen=True)
class WeChatMessage:
    """One message or event pushed by WeChat, in the platform's field names' meaning."""

    to_user: str  # the Official Account's original ID (gh_...)
    from_user: str  # the customer's OpenID
    create_time: int
    msg_type: str  # text, image, voice, video, shortvideo, location, link, file, event
    msg_id: str | None = None
    content: str | None = None
    event: str | None = None  # for msg_type "event": subscribe, unsubscribe, CLICK, SCAN...
    fields: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str | None:
        """What the customer wrote, or None when the message is not text."""
        if self.msg_type == "text":
            return self.content or ""
        recognition = self.fields.get("Recognition", "").strip()
        if self.msg_type == "voice" and recognition:
            return recognition
        return None

    @property
    def dedupe_key(self) -> str:
        """MsgId, or FromUserName + CreateTime for events (the platform's advice)."""
        return self.msg_id or f"{self.from_user}:{self.create_time}"


def parse_message(xml: bytes | str) -> WeChatMessage:
    """Parse a plaintext message or event; WeChatError (400) names a missing or bad field."""
    fields = parse_xml(xml)
    for name in ("ToUserName", "FromUserName", "CreateTime", "MsgType"):
        if not fields.get(name, "").strip():
            raise WeChatError(f"the message has no <{name}>", code="invalid_xml", param=name)
    try:
        create_time = int(fields["CreateTime"])
    except ValueError:
        raise WeChatError(
            f"CreateTime must be a Unix time in seconds, got {fields['CreateTime'][:40]!r}",
            code="invalid_xml",
            param="CreateTime",
        ) from None
    # An openid is 28 characters and a MsgId 19 digits; much longer ones are not WeChat's.
    for name, longest in (("FromUserName", 128), ("ToUserName", 128), ("MsgId", 32)):
        if len(fields.get(name, "")) > longest:
            raise WeChatError(
                f"<{name}> is longer than {longest} characters", code="invalid_xml", param=name
            )
    msg_type = fields["MsgType"].strip()
    return WeChatMessage(
        to_user=fields["ToUserName"],
        from_user=fields["FromUserName"],
        create_time=create_time,
        msg_type=msg_type,
        msg_id=fields.get("MsgId") or None,
        content=fields.get("Content"),
        event=fields.get("Event") if msg_type == "event" else None,
        fields=fields,
    )


def _cdata(value: str) -> str:
    # "]]>" would end the section early; split it across two sections instead.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_text_reply(
    *, to_user: str, from_user: str, content: str, create_time: int | None = None
) -> str:
    """A passive text reply (to_user is the customer, from_user the Official Account)."""
    create_time = int(time.time()) if create_time is None else create_time
    return (
        f"<xml><ToUserName>{_cdata(to_user)}</ToUserName>"
        f"<FromUserName>{_cdata(from_user)}</FromUserName>"
        f"<CreateTime>{create_time}</CreateTime>"
        f"<MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{_cdata(_XML_INVALID.sub('', content))}</Content></xml>"
    )


# ---- HTTP ---------------------------------------------------------------------------------------


def _required(query: Any, *names: str) -> list[str]:
    """The values of required query parameters, or a 400 naming every one that is missing."""
    missing = [name for name in names if not query.get(name)]
    if missing:
        raise WeChatError(
            f"missing query parameter(s): {', '.join(missing)}; WeChat always sends them",
            code="missing_parameter",
            param=missing[0],
        )
    return [query[name] for name in names]


async def _answer(request: Request, config: WeChatConfig, message: WeChatMessage) -> str | None:
    """The text to send back, or None for "no reply"."""
    service = request.app.state.service
    if message.msg_type == "event":
        if message.event == "subscribe":
            return service.greeting(language_hint=None)
        return None
    text = message.text
    if text is None:
        return TEXT_ONLY_REPLY
    if not text.strip():
        return None
    return await service.channel_reply(
        channel="wechat",
        user=message.from_user,
        text=text,
        channel_message_id=message.dedupe_key,
        deadline_s=config.reply_deadline_s,
        request_id=getattr(request.state, "request_id", None),
    )


# A signed request older (or newer) than this is refused: in plaintext mode the signature does
# not cover the body, so an old signed URL must not work for ever. Safe mode signs the body too.
MAX_CLOCK_SKEW_S = 300


def check_fresh(timestamp: str, now: float | None = None) -> None:
    """Raise a 403 WeChatError unless `timestamp` is within MAX_CLOCK_SKEW_S of now."""
    now = time.time() if now is None else now
    try:
        skew = abs(now - int(timestamp))
    except ValueError:
        raise WeChatError(
            f"timestamp must be Unix seconds, got {timestamp[:40]!r}",
            code="invalid_parameter",
            param="timestamp",
        ) from None
    if skew > MAX_CLOCK_SKEW_S:
        raise WeChatError(
            f"the request was signed {skew:.0f} s away from this server's clock (at most "
            f"{MAX_CLOCK_SKEW_S} s): a replayed request, or a server clock that needs NTP",
            code="stale_timestamp",
            status_code=403,
            param="timestamp",
        )


def _incoming_xml(config: WeChatConfig, query: Any, body: bytes) -> tuple[str | bytes, bool]:
    """The authenticated message XML and whether the request used safe mode."""
    encrypt_type = query.get("encrypt_type") or "raw"
    if encrypt_type == "aes":
        msg_signature, timestamp, nonce = _required(query, "msg_signature", "timestamp", "nonce")
        check_fresh(timestamp)
        xml = open_envelope(
            body, config=config, msg_signature=msg_signature, timestamp=timestamp, nonce=nonce
        )
        return xml, True
    if encrypt_type != "raw":
        raise WeChatError(
            f"unknown encrypt_type {encrypt_type!r}; expected 'aes' or none",
            code="invalid_parameter",
            param="encrypt_type",
        )
    signature, timestamp, nonce = _required(query, "signature", "timestamp", "nonce")
    verify_signature(signature, config.token, timestamp, nonce)
    check_fresh(timestamp)
    return body, False


def router(config: WeChatConfig) -> APIRouter:
    """GET (URL verification) and POST (messages) on /channels/wechat for one Official Account."""
    api = APIRouter(tags=["channels"])

    @api.get(PATH, response_class=PlainTextResponse)
    async def verify_url(request: Request) -> Response:
        signature, timestamp, nonce, echostr = _required(
            request.query_params, "signature", "timestamp", "nonce", "echostr"
        )
        verify_signature(signature, config.token, timestamp, nonce)
        return PlainTextResponse(echostr)

    @api.post(PATH)
    async def receive(request: Request) -> Response:
        xml, safe = _incoming_xml(config, request.query_params, await request.body())
        message = parse_message(xml)
        answer = await _answer(request, config, message)
        if answer is None:
            return PlainTextResponse(NO_REPLY)
        reply = render_text_reply(
            to_user=message.from_user, from_user=message.to_user, content=answer
        )
        if safe:
            nonce = str(secrets.randbelow(10**10))
            reply = seal(reply, config=config, timestamp=str(int(time.time())), nonce=nonce)
        return Response(reply, media_type="application/xml")

    return api
