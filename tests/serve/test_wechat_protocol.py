"""The WeChat protocol pieces, checked against the platform's documentation without a server.

The test's own helpers (`doc_encrypt`, `doc_decrypt`, `doc_sign`) are written from the
documentation with hashlib and `cryptography`, independently of the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import xml.etree.ElementTree as ET

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import ValidationError

from kefu.errors import KefuError
from kefu.serve.channels import wechat
from kefu.serve.channels.wechat import WeChatConfig, WeChatError

TOKEN = "kefuToken2024"
APP_ID = "wx1234567890abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as the console issues
TIMESTAMP = "1714112445"
NONCE = "415670741"

TEXT_XML = """<xml>
  <ToUserName><![CDATA[gh_acmebank]]></ToUserName>
  <FromUserName><![CDATA[oCustomerOpenId]]></FromUserName>
  <CreateTime>1348831860</CreateTime>
  <MsgType><![CDATA[text]]></MsgType>
  <Content><![CDATA[{content}]]></Content>
  <MsgId>1234567890123456</MsgId>
</xml>"""

IMAGE_XML = """<xml>
  <ToUserName><![CDATA[gh_acmebank]]></ToUserName>
  <FromUserName><![CDATA[oCustomerOpenId]]></FromUserName>
  <CreateTime>1348831860</CreateTime>
  <MsgType><![CDATA[image]]></MsgType>
  <PicUrl><![CDATA[http://mmbiz.qpic.cn/example.jpg]]></PicUrl>
  <MediaId><![CDATA[media_id]]></MediaId>
  <MsgId>1234567890123457</MsgId>
</xml>"""

SUBSCRIBE_XML = """<xml>
  <ToUserName><![CDATA[gh_acmebank]]></ToUserName>
  <FromUserName><![CDATA[oCustomerOpenId]]></FromUserName>
  <CreateTime>123456789</CreateTime>
  <MsgType><![CDATA[event]]></MsgType>
  <Event><![CDATA[subscribe]]></Event>
</xml>"""


# ---- the documentation, written out independently -------------------------------------------


def doc_sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def doc_key(encoding_aes_key: str = AES_KEY) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def doc_encrypt(xml: str, app_id: str = APP_ID, random16: bytes = b"0123456789abcdef") -> str:
    key = doc_key()
    body = xml.encode("utf-8")
    plain = random16 + struct.pack(">I", len(body)) + body + app_id.encode()
    pad = 32 - len(plain) % 32  # PKCS#7 to 32-byte blocks: a full block when already aligned
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def doc_decrypt(encrypted: str) -> tuple[str, str]:
    """(message XML, AppId) from an Encrypt field."""
    key = doc_key()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()
    pad = plain[-1]
    assert 1 <= pad <= 32 and plain[-pad:] == bytes([pad]) * pad
    plain = plain[16:-pad]
    (length,) = struct.unpack(">I", plain[:4])
    return plain[4 : 4 + length].decode("utf-8"), plain[4 + length :].decode()


@pytest.fixture
def config() -> WeChatConfig:
    return WeChatConfig(token=TOKEN, app_id=APP_ID, encoding_aes_key=AES_KEY)


# ---- signatures -------------------------------------------------------------------------------


def test_signature_is_sha1_of_sorted_parts():
    expected = hashlib.sha1("".join(sorted([TOKEN, TIMESTAMP, NONCE])).encode()).hexdigest()
    assert wechat.sign(TOKEN, TIMESTAMP, NONCE) == expected
    assert wechat.sign(NONCE, TOKEN, TIMESTAMP) == expected  # order of the arguments is irrelevant
    # A golden value, so a change in the sort (e.g. bytes vs. str) cannot hide behind both sides.
    assert (
        wechat.sign("token", "1409304348", "xxxxxx")
        == hashlib.sha1(b"1409304348tokenxxxxxx").hexdigest()
    )


def test_verify_signature_accepts_good_and_refuses_bad():
    wechat.verify_signature(doc_sign(TOKEN, TIMESTAMP, NONCE), TOKEN, TIMESTAMP, NONCE)
    with pytest.raises(WeChatError) as caught:
        wechat.verify_signature("0" * 40, TOKEN, TIMESTAMP, NONCE)
    assert caught.value.status_code == 403
    assert caught.value.code == "invalid_signature" == caught.value.type
    assert "KEFU_WECHAT_TOKEN" in caught.value.message
    with pytest.raises(WeChatError):  # non-ASCII must be refused, not crash compare_digest
        wechat.verify_signature("签名", TOKEN, TIMESTAMP, NONCE)


# ---- safe mode --------------------------------------------------------------------------------


def test_module_decrypts_what_the_documentation_encrypts():
    xml = TEXT_XML.format(content="我的信用卡丢了，怎么办？")
    assert wechat.decrypt(doc_encrypt(xml), key=doc_key(), app_id=APP_ID) == xml


@pytest.mark.parametrize("size", [0, 1, 11, 12, 13, 44, 500])
def test_padding_round_trips_at_block_boundaries(size: int):
    # 16 + 4 + len(xml) + len(app_id) crosses a 32-byte boundary somewhere in this range.
    xml = "x" * size
    encrypted = wechat.encrypt(xml, key=doc_key(), app_id=APP_ID)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert doc_decrypt(encrypted) == (xml, APP_ID)
    assert wechat.decrypt(doc_encrypt(xml), key=doc_key(), app_id=APP_ID) == xml


def test_envelope_checks_msg_signature_then_decrypts(config: WeChatConfig):
    xml = TEXT_XML.format(content="转账限额是多少？")
    encrypted = doc_encrypt(xml)
    body = (
        "<xml><ToUserName><![CDATA[gh_acmebank]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    ).encode()
    msg_signature = doc_sign(TOKEN, TIMESTAMP, NONCE, encrypted)
    opened = wechat.open_envelope(
        body, config=config, msg_signature=msg_signature, timestamp=TIMESTAMP, nonce=NONCE
    )
    assert wechat.parse_message(opened).content == "转账限额是多少？"

    # The plain signature (without Encrypt) is not the msg_signature.
    with pytest.raises(WeChatError) as caught:
        wechat.open_envelope(
            body,
            config=config,
            msg_signature=doc_sign(TOKEN, TIMESTAMP, NONCE),
            timestamp=TIMESTAMP,
            nonce=NONCE,
        )
    assert (caught.value.code, caught.value.param) == ("invalid_signature", "msg_signature")


def test_sealed_reply_decrypts_and_its_signature_verifies(config: WeChatConfig):
    reply = wechat.render_text_reply(
        to_user="oCustomerOpenId", from_user="gh_acmebank", content="您好！Hello!", create_time=1
    )
    sealed = ET.fromstring(wechat.seal(reply, config=config, timestamp=TIMESTAMP, nonce=NONCE))
    assert [child.tag for child in sealed] == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    encrypted = sealed.findtext("Encrypt")
    assert sealed.findtext("MsgSignature") == doc_sign(TOKEN, TIMESTAMP, NONCE, encrypted)
    assert (sealed.findtext("TimeStamp"), sealed.findtext("Nonce")) == (TIMESTAMP, NONCE)
    inner, app_id = doc_decrypt(encrypted)
    assert app_id == APP_ID
    assert inner == reply
    assert ET.fromstring(inner).findtext("Content") == "您好！Hello!"


def test_random_prefix_differs_between_replies():
    first = wechat.encrypt("<xml/>", key=doc_key(), app_id=APP_ID)
    second = wechat.encrypt("<xml/>", key=doc_key(), app_id=APP_ID)
    assert first != second


def test_wrong_app_id_is_refused_with_both_ids_named():
    encrypted = doc_encrypt(TEXT_XML.format(content="hi"), app_id="wxSomebodyElse")
    with pytest.raises(WeChatError) as caught:
        wechat.decrypt(encrypted, key=doc_key(), app_id=APP_ID)
    assert (caught.value.status_code, caught.value.code) == (403, "invalid_app_id")
    assert "wxSomebodyElse" in caught.value.message
    assert APP_ID in caught.value.message


def test_tampered_ciphertext_is_a_clear_error():
    data = bytearray(base64.b64decode(doc_encrypt(TEXT_XML.format(content="hi"))))
    # CBC: flipping a bit of the second-last block flips the same bit of the last plaintext
    # block, here its final byte, the padding length: the padding no longer checks out.
    data[-17] ^= 0x01
    with pytest.raises(WeChatError) as caught:
        wechat.decrypt(base64.b64encode(bytes(data)).decode(), key=doc_key(), app_id=APP_ID)
    assert (caught.value.status_code, caught.value.code) == (400, "decrypt_failed")
    assert "padding" in caught.value.message
    assert "KEFU_WECHAT_AES_KEY" in caught.value.message


@pytest.mark.parametrize(
    ("encrypted", "why"),
    [("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "whole number")],
)
def test_garbage_ciphertext_is_a_clear_error(encrypted: str, why: str):
    with pytest.raises(WeChatError) as caught:
        wechat.decrypt(encrypted, key=doc_key(), app_id=APP_ID)
    assert caught.value.code == "decrypt_failed"
    assert why in caught.value.message


def test_a_different_key_is_a_clear_error():
    other = WeChatConfig(token=TOKEN, app_id=APP_ID, encoding_aes_key="B" * 43)
    with pytest.raises(WeChatError) as caught:
        wechat.decrypt(
            doc_encrypt(TEXT_XML.format(content="hi")),
            key=wechat.aes_key(other.encoding_aes_key),
            app_id=APP_ID,
        )
    assert caught.value.code in {"decrypt_failed", "invalid_app_id"}


def test_tampered_envelope_fails_the_signature_first(config: WeChatConfig):
    encrypted = doc_encrypt(TEXT_XML.format(content="hi"))
    msg_signature = doc_sign(TOKEN, TIMESTAMP, NONCE, encrypted)
    altered = encrypted[:10] + ("A" if encrypted[10] != "A" else "B") + encrypted[11:]
    body = f"<xml><Encrypt><![CDATA[{altered}]]></Encrypt></xml>"
    with pytest.raises(WeChatError) as caught:
        wechat.open_envelope(
            body.encode(),
            config=config,
            msg_signature=msg_signature,
            timestamp=TIMESTAMP,
            nonce=NONCE,
        )
    assert caught.value.status_code == 403


def test_envelope_without_encrypt_is_malformed(config: WeChatConfig):
    with pytest.raises(WeChatError) as caught:
        wechat.open_envelope(
            b"<xml><ToUserName>gh</ToUserName></xml>",
            config=config,
            msg_signature="x",
            timestamp=TIMESTAMP,
            nonce=NONCE,
        )
    assert (caught.value.code, caught.value.param) == ("invalid_xml", "Encrypt")


def test_matches_wechatpy_both_ways(config: WeChatConfig):
    """Parity with a widely used implementation of the same protocol."""
    from wechatpy.crypto import WeChatCrypto

    reference = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    reply = wechat.render_text_reply(
        to_user="o1", from_user="gh", content="余额查询", create_time=1
    )
    sealed = ET.fromstring(wechat.seal(reply, config=config, timestamp=TIMESTAMP, nonce=NONCE))
    body = f"<xml><Encrypt><![CDATA[{sealed.findtext('Encrypt')}]]></Encrypt></xml>"
    assert (
        reference.decrypt_message(body, sealed.findtext("MsgSignature"), TIMESTAMP, NONCE) == reply
    )

    theirs = ET.fromstring(reference.encrypt_message(reply, NONCE, TIMESTAMP))
    opened = wechat.open_envelope(
        wechat_body(theirs.findtext("Encrypt")),
        config=config,
        msg_signature=theirs.findtext("MsgSignature"),
        timestamp=TIMESTAMP,
        nonce=NONCE,
    )
    assert opened == reply


def wechat_body(encrypted: str) -> bytes:
    return f"<xml><ToUserName>gh</ToUserName><Encrypt>{encrypted}</Encrypt></xml>".encode()


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"), [("abc", "43 characters, got 3"), ("!" * 43, "letters and digits")]
)
def test_aes_key_must_be_43_base64_characters(key: str, reason: str):
    with pytest.raises(ValidationError, match=reason):
        WeChatConfig(token=TOKEN, app_id=APP_ID, encoding_aes_key=key)
    assert len(wechat.aes_key(AES_KEY)) == 32


def test_safe_mode_needs_app_id():
    with pytest.raises(ValidationError, match="needs app_id"):
        WeChatConfig(token=TOKEN, encoding_aes_key=AES_KEY)


@pytest.mark.parametrize("token", ["ab", "has space", " kefuToken", "x" * 33, "令牌令牌"])
def test_token_shape_is_checked(token: str):
    with pytest.raises(ValidationError, match="3 to 32 ASCII"):
        WeChatConfig(token=token)
    assert WeChatConfig(token="kefu-test-token").token == "kefu-test-token"


def test_deadline_must_stay_inside_wechats_five_seconds():
    with pytest.raises(ValidationError):
        WeChatConfig(token=TOKEN, reply_deadline_s=5.0)
    assert WeChatConfig(token=TOKEN).reply_deadline_s == 4.5


def test_from_env():
    assert WeChatConfig.from_env({}) is None
    assert WeChatConfig.from_env({"KEFU_WECHAT_APP_ID": APP_ID}) is None
    plain = WeChatConfig.from_env({"KEFU_WECHAT_TOKEN": TOKEN})
    assert plain is not None and not plain.safe_mode and plain.app_id == ""
    safe = WeChatConfig.from_env(
        {
            "KEFU_WECHAT_TOKEN": TOKEN,
            "KEFU_WECHAT_APP_ID": APP_ID,
            "KEFU_WECHAT_AES_KEY": AES_KEY,
            "KEFU_WECHAT_REPLY_DEADLINE_S": "3",
        }
    )
    assert safe == WeChatConfig(
        token=TOKEN, app_id=APP_ID, encoding_aes_key=AES_KEY, reply_deadline_s=3
    )
    with pytest.raises(KefuError, match=r"KEFU_WECHAT_AES_KEY: .*43 characters"):
        WeChatConfig.from_env({"KEFU_WECHAT_TOKEN": TOKEN, "KEFU_WECHAT_AES_KEY": "short"})


# ---- messages ---------------------------------------------------------------------------------


def test_parse_text_message_keeps_chinese_exactly():
    content = "你好，我想查询信用卡账单 ]]> & <b>"
    xml = TEXT_XML.format(content=content.replace("]]>", "]]]]><![CDATA[>"))
    message = wechat.parse_message(xml.encode("utf-8"))
    assert message.to_user == "gh_acmebank"
    assert message.from_user == "oCustomerOpenId"
    assert message.create_time == 1348831860
    assert (message.msg_type, message.msg_id) == ("text", "1234567890123456")
    assert message.text == message.content == content
    assert message.dedupe_key == "1234567890123456"


def test_parse_image_message_has_no_text():
    message = wechat.parse_message(IMAGE_XML)
    assert message.msg_type == "image"
    assert message.text is None
    assert message.fields["PicUrl"] == "http://mmbiz.qpic.cn/example.jpg"


def test_parse_subscribe_event():
    message = wechat.parse_message(SUBSCRIBE_XML)
    assert (message.msg_type, message.event, message.msg_id) == ("event", "subscribe", None)
    assert message.text is None
    assert message.dedupe_key == "oCustomerOpenId:123456789"


def test_voice_with_recognition_counts_as_text():
    voice = IMAGE_XML.replace("image", "voice").replace(
        "<PicUrl>", "<Recognition><![CDATA[我要转人工]]></Recognition><PicUrl>"
    )
    assert wechat.parse_message(voice).text == "我要转人工"
    assert wechat.parse_message(IMAGE_XML.replace("image", "voice")).text is None


def test_nested_event_details_are_flattened():
    scan = SUBSCRIBE_XML.replace(
        "<Event><![CDATA[subscribe]]></Event>",
        "<Event>scancode_push</Event><ScanCodeInfo><ScanType>qrcode</ScanType>"
        "<ScanResult>1</ScanResult></ScanCodeInfo>",
    )
    fields = wechat.parse_message(scan).fields
    assert fields["ScanType"] == "qrcode" and "ScanCodeInfo" not in fields


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "no element found"),
        (b"<xml><Content>unclosed</xml>", "mismatched tag"),
        (b"not xml at all", "syntax error"),
        ("<xml><Content>中文</Content></xml>".encode("gbk"), "not well-formed"),
        (b"<root><Content>x</Content></root>", "root element must be <xml>"),
        (b"<xml><Content>&undefined;</Content></xml>", "undefined entity"),
    ],
)
def test_malformed_xml_is_a_400(body: bytes, says: str):
    with pytest.raises(WeChatError, match=says) as caught:
        wechat.parse_xml(body)
    assert (caught.value.status_code, caught.value.code) == (400, "invalid_xml")


def test_doctype_is_refused_so_entities_cannot_expand():
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;">]><xml><Content>&c;</Content></xml>'
    )
    external = b'<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><C>&e;</C></xml>'
    for body in (laughs, external):
        with pytest.raises(WeChatError, match="DOCTYPE") as caught:
            wechat.parse_xml(body)
        assert caught.value.status_code == 400


@pytest.mark.parametrize("missing", ["ToUserName", "FromUserName", "CreateTime", "MsgType"])
def test_missing_required_field_is_named(missing: str):
    xml = "".join(
        line for line in TEXT_XML.format(content="hi").splitlines() if f"<{missing}>" not in line
    )
    with pytest.raises(WeChatError, match=f"no <{missing}>") as caught:
        wechat.parse_message(xml)
    assert caught.value.param == missing


def test_bad_create_time_is_named():
    with pytest.raises(WeChatError, match="CreateTime must be a Unix time"):
        wechat.parse_message(TEXT_XML.format(content="hi").replace("1348831860", "yesterday"))


def test_text_reply_round_trips_chinese_and_awkward_characters():
    content = "您好！信用卡挂失请拨打 95555。]]> <script>&amp;\x00\x07 done"
    reply = wechat.render_text_reply(
        to_user="oCustomerOpenId", from_user="gh_acmebank", content=content, create_time=1714112445
    )
    parsed = ET.fromstring(reply)
    assert [child.tag for child in parsed] == [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Content",
    ]
    assert parsed.findtext("ToUserName") == "oCustomerOpenId"
    assert parsed.findtext("FromUserName") == "gh_acmebank"
    assert parsed.findtext("CreateTime") == "1714112445"
    assert parsed.findtext("MsgType") == "text"
    # Control characters are not allowed in XML 1.0 and are dropped; everything else survives.
    assert parsed.findtext("Content") == content.replace("\x00", "").replace("\x07", "")
    assert wechat.parse_message(reply).content == parsed.findtext("Content")
