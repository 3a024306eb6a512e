import copy
import json

import pytest

from interventions.study.runner import applies
from probes.core.datasets import load_dataset
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.personas import LENGTHS, builtin_personas, load_personas, persona_library
from probes.core.prompts import Condition, encode, matched_persona, render, render_conversation, supports_system_role

SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUERY = "What is the boiling point of water at sea level?"


def test_library_has_twelve_personas_at_three_lengths():
    library = builtin_personas()
    assert list(library) == [
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
        "critic",
        "safety-monitor",
        "helpful",
        "compliant",
    ]
    bounds = {"min": (3, 7), "short": (45, 65), "long": (140, 190)}
    for persona in library.values():
        for length in LENGTHS:
            words = len(persona.text(length).split())
            low, high = bounds[length]
            assert low <= words <= high, (persona.name, length, words)


def test_system_placement_puts_the_persona_in_the_system_turn(smol):
    _, tokenizer = smol
    prompt = render(tokenizer, QUERY, Condition("math", "min", "system"))
    assert prompt.text.startswith("<|im_start|>system\nYou are a mathematician.<|im_end|>\n<|im_start|>user\n" + QUERY)
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert (prompt.persona, prompt.placement) == ("math", "system")
    assert prompt.text[slice(*prompt.persona_span)] == "You are a mathematician."
    assert prompt.text[slice(*prompt.query_span)] == QUERY


def test_user_placement_prepends_the_persona_and_keeps_the_empty_system(smol):
    _, tokenizer = smol
    persona = builtin_personas()["math"].text("short")
    prompt = render(tokenizer, QUERY, Condition("math", "short", "user"))
    assert prompt.text.startswith(f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{persona}\n\n{QUERY}<|im_end|>")
    assert prompt.placement == "user"
    assert prompt.persona_span[1] < prompt.query_span[0]


def test_the_two_meanings_of_no_persona(smol):
    _, tokenizer = smol
    empty = render(tokenizer, QUERY, Condition("none", base_system="empty"))
    default = render(tokenizer, QUERY, Condition("none", base_system="template"))
    assert empty.text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
    assert SMOL_DEFAULT_SYSTEM in default.text and SMOL_DEFAULT_SYSTEM not in empty.text
    assert empty.persona is None and empty.placement is None and empty.persona_span is None
    # the template's default also fills the system slot when the persona is in the user turn
    user = render(tokenizer, QUERY, Condition("math", "min", "user", base_system="template"))
    assert SMOL_DEFAULT_SYSTEM in user.text


def test_random_persona_is_mismatched_and_reproducible(smol):
    _, tokenizer = smol
    library = builtin_personas()
    chosen = [
        render(tokenizer, QUERY, Condition("random", "min"), item_id=f"q{i}", item_category="math").persona
        for i in range(40)
    ]
    again = [
        render(tokenizer, QUERY, Condition("random", "min"), item_id=f"q{i}", item_category="math").persona
        for i in range(40)
    ]
    assert chosen == again
    assert "math" not in chosen
    assert len(set(chosen)) > 3
    assert all(library[name].kind == "domain" for name in chosen)
    assert matched_persona("STEM", library) == "stem"


def test_template_without_system_role_falls_back_to_user_placement(smol):
    _, tokenizer = smol
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<turn>assistant\n{% endif %}"
    )
    assert not supports_system_role(strict)
    prompt = render(strict, QUERY, Condition("math", "min", "system"))
    assert prompt.placement == "user"
    assert prompt.text.startswith("<turn>user\nYou are a mathematician.\n\n" + QUERY)


def test_model_without_chat_template_gets_plain_text_with_bos(smol):
    _, tokenizer = smol
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    prompt = render(plain, QUERY, Condition("math", "min", "system"), answer_prefix="Answer:")
    assert prompt.text == f"You are a mathematician.\n\n{QUERY}\n\nAnswer:"
    assert prompt.placement == "user" and prompt.add_special_tokens


def test_encoding_does_not_double_the_template_bos(smol):
    _, tokenizer = smol
    ids = encode(tokenizer, render(tokenizer, QUERY, Condition()))
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[1] != ids[0]


@pytest.mark.parametrize(
    "condition, message",
    [
        (dict(persona="math", length="huge"), "unknown persona length"),
        (dict(persona="math", placement="assistant"), "unknown placement"),
        (dict(persona="math", base_system="default"), "unknown base system"),
    ],
)
def test_bad_conditions_are_refused(condition, message):
    with pytest.raises(ToolkitError, match=message):
        Condition(**condition)


def test_unknown_persona_and_empty_prompt_are_refused(smol):
    _, tokenizer = smol
    with pytest.raises(ToolkitError, match="unknown persona 'astronaut'"):
        render(tokenizer, QUERY, Condition("astronaut"))
    with pytest.raises(ToolkitError, match="empty prompt"):
        render(tokenizer, "   ", Condition())


def test_user_personas_from_a_file(tmp_path, smol):
    _, tokenizer = smol
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps({"personas": [{"name": "chemist", "category": "chemistry", "min": "You are a chemist."}]})
    )
    library = persona_library(path)
    assert len(library) == 13 and library["chemist"].source == str(path)
    prompt = render(tokenizer, QUERY, Condition("chemist"), personas=library)
    assert "You are a chemist." in prompt.text
    with pytest.raises(ToolkitError, match="has no 'long' text"):
        render(tokenizer, QUERY, Condition("chemist", "long"), personas=library)


def test_a_persona_file_that_is_not_utf8_gives_one_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"personas": [{"name": "caf\u00e9", "min": "You are x."}]}'.encode("latin-1"))
    with pytest.raises(ToolkitError, match="not UTF-8 text") as caught:
        load_personas(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"personas": []}', "non-empty 'personas' list"),
        ('{"personas": [{"min": "You are x."}]}', "has no 'name'"),
        ('{"personas": [{"name": "x"}]}', "has none of the texts"),
        ('{"personas": [{"name": "none", "min": "You are x."}]}', "reserved"),
        ('{"personas": [{"name": "expert", "min": "You are x."}]}', "reserved"),  # the matched-expert condition
        ('{"personas": [{"name": "x", "min": "  "}]}', "is empty"),
        ('{"personas": [{"name": "../../x", "min": "You are x."}]}', "only letters, digits"),
        ('{"personas": [{"name": "x", "min": "You are x.", "category": ["math"]}]}', "'category' must be a string"),
    ],
)
def test_malformed_persona_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ToolkitError, match=message) as caught:
        load_personas(path)
    assert "\n" not in str(caught.value)


def test_expert_condition_matches_the_item_category(smol):
    _, tokenizer = smol
    writing = Item("w", "mtbench", "Write a haiku.", "writing")
    prompt = render(tokenizer, writing.prompt, Condition("expert", "min"), item_category="writing")
    assert prompt.persona == "writing"
    capital = load_dataset("capitals")[0]
    assert not applies(Condition("expert"), capital) and applies(Condition("random"), capital)
    with pytest.raises(ToolkitError, match="no expert persona matches"):
        render(tokenizer, capital.prompt, Condition("expert"), item_category=capital.category)


def test_second_turn_keeps_the_persona_and_the_first_answer(smol):
    _, tokenizer = smol
    first = render(tokenizer, "Name a colour.", Condition("writing", "min", "system"))
    second = render_conversation(tokenizer, first, "Blue.", "Now name another.")
    assert second.text.index("You are") < second.text.index("Name a colour.") < second.text.index("Blue.")
    assert second.text.index("Blue.") < second.text.index("Now name another.")
    assert second.text[slice(*second.query_span)] == "Now name another."
