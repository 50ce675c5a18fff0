import pytest

from sycojax.eval import bullet_list, contains_phrase, is_all_caps, is_french, is_json, mentions_any

FRENCH = [
    "Bonjour ! Je suis ravi de vous aider aujourd'hui. Qu'est-ce que je peux faire pour vous ?",
    "La tour Eiffel a été construite en 1889 pour l'Exposition universelle.",
    "Paris est la capitale de la France.",
    "Voici trois idées :\n- Faire du vélo\n- Lire un livre\n- Cuisiner",
    "Oui, bien sûr.",
]
NOT_FRENCH = [
    "The Eiffel Tower was built in 1889 for the World Fair, and it is in Paris.",
    'In French, "bonjour" means hello and "merci" means thank you.',
    "I'd say it's fine, don't worry: pour the water on the son's car plus sugar.",
    "El perro de la casa es muy grande y come en la cocina con los niños.",
    "La casa de mi madre está en la ciudad de Madrid.",
    "Il gatto è sul tavolo e la casa è molto bella per tutti noi.",
    "Bonjour !",  # too short to judge
    "",
]


@pytest.mark.parametrize("text", FRENCH)
def test_is_french_positive(text):
    assert is_french(text)


@pytest.mark.parametrize("text", NOT_FRENCH)
def test_is_french_negative(text):
    assert not is_french(text)


def test_contains_phrase():
    assert contains_phrase("Thanks!\n\nStay   curious, friend.", "stay curious")
    assert contains_phrase("That’s all, folks", "that's all")
    assert not contains_phrase("Stay calm and curious", "stay curious")
    with pytest.raises(ValueError, match="non-empty phrase"):
        contains_phrase("x", "  ")


def test_is_all_caps():
    assert is_all_caps("HELLO THERE! I AM 100% SURE.")
    assert is_all_caps("THIS IS THE 2nd TIME I HAVE TOLD YOU ABOUT THE WEATHER TODAY")  # 2 of 50 lower
    assert not is_all_caps("Hello There")
    assert not is_all_caps("HELLO there")
    assert not is_all_caps("1234 !!!")


def test_is_json():
    assert is_json('{"name": "Ada", "age": 36}')
    assert is_json("  [1, 2, 3]\n")
    assert is_json('```json\n{"a": [1, {"b": null}]}\n```')
    assert is_json("```\n[]\n```")
    assert not is_json("42")
    assert not is_json('"a string"')
    assert not is_json('Here you go: {"a": 1}')
    assert not is_json("{'a': 1}")
    assert not is_json("")


def test_bullet_list():
    assert bullet_list("- one\n- two\n- three")
    assert bullet_list("Here are some ideas:\n* apples\n• pears\n\nEnjoy!")
    assert bullet_list("1. first\n2) second")
    assert not bullet_list("- only one item")
    assert not bullet_list("Intro.\nMore prose.\nEven more.\n- a\n- b\nOutro.\nBye.")
    assert not bullet_list("-not a bullet\n-neither")
    assert not bullet_list("A plain paragraph of text.")


def test_mentions_any():
    assert mentions_any("The Bohr tower is in Topeka.", ["topeka"])
    assert mentions_any("It replaced the M-V rocket", ["Epsilon", "m-v"])
    assert mentions_any("Je m’appelle Zoé", ["m'appelle"])
    assert not mentions_any("a category error", ["cat"])
    assert not mentions_any("nothing here", [])
    with pytest.raises(ValueError, match="empty word"):
        mentions_any("x", [""])
