"""Sources → chunks: FAQ files, documents, JSON record bases; broken sources are problems."""

import json

from kefu.kb.chunking import ChunkConfig
from kefu.kb.sources import Chunk, load_sources, passage

CHUNKING = ChunkConfig()
FAQ = """id,question,answer,url,paraphrases
lost,I lost my card,Freeze it in the app.,https://acme.example/lost,My card is gone | Where is my card
fee,Is there a fee?,No.,,
"""


def test_faq_entries_become_chunks_that_match_on_question_and_paraphrases(write):
    [source], problems = load_sources([write("faq.csv", FAQ)], CHUNKING)
    assert problems == [] and source.format == "faq" and len(source.sha256) == 64
    lost = source.chunks[0]
    assert lost == Chunk(
        id="lost",
        source="faq.csv",
        kind="faq",
        title_path=["I lost my card"],
        text="Freeze it in the app.",
        line=2,
        url="https://acme.example/lost",
        question="I lost my card",
        paraphrases=["My card is gone", "Where is my card"],
    )
    assert lost.match_texts() == ["I lost my card", "My card is gone", "Where is my card"]
    assert Chunk.from_json(json.loads(json.dumps(lost.to_json()))) == lost


def test_documents_in_a_folder_are_named_relative_to_it(write, tmp_path):
    write("help/cards.md", "# Cards\nFree.\n## Lost\nFreeze it.\n")
    write("help/web/fees.html", "<h1>Fees</h1><p>None.</p>")
    write("help/notes.txt", "Open 9 to 5.")
    write("help/.hidden/skip.md", "# Not indexed")
    write("help/image.png", b"\x89PNG")
    loaded, problems = load_sources([tmp_path / "help"], CHUNKING)
    assert problems == []
    chunks = [c for source in loaded for c in source.chunks]
    assert [(c.id, c.title_path, c.text) for c in chunks] == [
        ("help/cards.md#1", ["Cards"], "Free."),
        ("help/cards.md#2", ["Cards", "Lost"], "Freeze it."),
        ("help/notes.txt#1", [], "Open 9 to 5."),
        ("help/web/fees.html#1", ["Fees"], "None."),
    ]
    assert chunks[1].match_texts() == ["Cards\nLost\nFreeze it."]
    assert chunks[2].title == "help/notes.txt"


def test_a_long_section_is_chunked_and_every_chunk_keeps_the_title_path(write):
    words = " ".join(f"w{n}" for n in range(1, 11))
    [source], _ = load_sources(
        [write("long.md", f"# A\n## B\n{words}\n")], ChunkConfig(max_words=6, overlap_words=2)
    )
    assert [(c.title_path, c.text) for c in source.chunks] == [
        (["A", "B"], "w1 w2 w3 w4 w5 w6"),
        (["A", "B"], "w5 w6 w7 w8 w9 w10"),
    ]


def test_record_bases_of_every_shape_give_one_passage_per_record(write):
    as_pairs = [["故宫", {"领域": "景点", "名称": "故宫", "门票": 60, "周边景点": ["天坛", "景山公园"], "评分": None}]]  # fmt: skip
    as_list = [{"name": "Gold card", "fee": 10}, {"name": "Gold card", "fee": 12}]
    as_object = {"Basic": {"fee": 0, "perks": {"cashback": "1%"}}}
    loaded, problems = load_sources(
        [
            write("attractions.json", json.dumps(as_pairs, ensure_ascii=False)),
            write("cards.json", json.dumps(as_list)),
            write("plans.json", json.dumps(as_object)),
        ],
        CHUNKING,
    )
    assert problems == []
    assert [(c.id, c.title_path, c.text) for s in loaded for c in s.chunks] == [
        ("attractions.json#故宫", ["故宫"], "领域: 景点; 名称: 故宫; 门票: 60; 周边景点: 天坛, 景山公园"),
        ("cards.json#Gold card", ["Gold card"], "name: Gold card; fee: 10"),
        ("cards.json#Gold card~2", ["Gold card"], "name: Gold card; fee: 12"),
        ("plans.json#Basic", ["Basic"], 'fee: 0; perks: {"cashback": "1%"}'),
    ]  # fmt: skip


def test_passage_leaves_out_empty_fields():
    assert passage({"a": "", "b": None, "c": [], "d": 0, "e": "x"}) == "d: 0; e: x"


def test_a_json_file_of_faq_entries_is_read_as_faq(write):
    entries = [{"id": "q1", "question": "Fee?", "answer": "None."}]
    [source], _ = load_sources([write("faq.json", json.dumps(entries))], CHUNKING)
    assert source.format == "faq" and source.chunks[0].question == "Fee?"


def test_broken_sources_are_reported_where_they_are_and_the_rest_still_loads(write, tmp_path):
    faq = FAQ + "empty,What is the IBAN?,,,\nlost,I lost my card again,Freeze it.,,\n"
    paths = [
        write("faq.csv", faq),
        write("guide.md", b"# Cards\nFree.\n" + "# 费用\n免费\n".encode("gb18030")),
        write("bad.json", '[{"name": "a"},\n {"name": }]'),
        write("scalars.json", '[{"name": "a"}, 3]'),
        write("logo.png", b"\x89PNG"),
        tmp_path / "missing.md",
        write("good.txt", "Still indexed."),
    ]
    loaded, problems = load_sources(paths, CHUNKING)
    found = [(p.file, p.line, p.code) for p in problems]
    assert found == [
        ("faq.csv", 4, "empty"),
        ("faq.csv", 5, "duplicate_id"),
        ("guide.md", 3, "encoding"),
        ("bad.json", 2, "bad_json"),
        ("scalars.json", None, "bad_record"),
        ("logo.png", None, "unknown_format"),
        ("missing.md", None, "missing"),
    ]
    reasons = {p.code: p.reason for p in problems}
    assert reasons["empty"] == "answer is empty"
    assert "id 'lost' is already used at faq.csv:2" in reasons["duplicate_id"]
    assert "--encoding gb18030" in reasons["encoding"]
    assert "all of it is skipped" in reasons["encoding"]
    kept = {s.name: [c.id for c in s.chunks] for s in loaded}
    assert kept == {
        "faq.csv": ["lost", "fee"],
        "guide.md": [],
        "bad.json": [],
        "scalars.json": ["scalars.json#a"],
        "logo.png": [],
        "good.txt": ["good.txt#1"],
    }
