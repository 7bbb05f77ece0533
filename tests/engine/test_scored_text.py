"""The text CLIP-T scores: the personalization token replaced only as a whole token."""

from __future__ import annotations

import pytest

from engine.scoring import scored_text

CASES = [
    # what plain substring replacement got wrong: words containing the token, a doubled class word
    ("a sks dog doing tasks", "sks", "dog", "a dog doing tasks"),
    ("who asks", "sks", "dog", "who asks"),
    ("<new1> dogs", "<new1>", "dog", "dogs"),
    ("sks dog's ball", "sks", "dog", "dog's ball"),
    # the token alone, at either end, repeated, next to punctuation
    ("sks on the beach", "sks", "dog", "dog on the beach"),
    ("a photo of sks", "sks", "dog", "a photo of dog"),
    ("a photo of sks.", "sks", "dog", "a photo of dog."),
    ("(sks) with a sks toy", "sks", "dog", "(dog) with a dog toy"),
    ("a <new1>, next to a <new1> dog", "<new1>", "dog", "a dog, next to a dog"),
    ("sks's ball", "sks", "dog", "dog's ball"),
    # words that contain the token are never touched
    ("a sksdog and asks and sks1", "sks", "dog", "a sksdog and asks and sks1"),
    ("tasks, masks, disks", "sks", "dog", "tasks, masks, disks"),
    ("a <new1>x", "<new1>x", "cat", "a cat"),
    # CLIP lowercases: the token matches in any case
    ("SKS dog", "sks", "dog", "dog"),
    ("a Sks dog", "Sks", "dog", "a dog"),
    ("a Sks dog", "sks", "dog", "a dog"),
    ("a <NEW1> dog", "<new1>", "dog", "a dog"),
    ("a photo of SKS", "sks", "dog", "a photo of dog"),
    ("TASKS and ASKS", "sks", "dog", "TASKS and ASKS"),
    # joined to a neighbour by - or _: CLIP splits them, so the token is there
    ("a sks-dog", "sks", "dog", "a dog"),
    ("a sks_dog", "sks", "dog", "a dog"),
    ("a sks - dog", "sks", "dog", "a dog"),
    ("a SKS_Dogs' toys", "sks", "dog", "a Dogs' toys"),
    ("a <new1>-dog", "<new1>", "dog", "a dog"),
    ("a dog-sks", "sks", "dog", "a dog"),
    ("a sks-toy", "sks", "dog", "a dog-toy"),
    ("a toy_sks", "sks", "dog", "a toy_dog"),
    ("a sks-dog", "sks", "", "a dog"),
    # repeats collapse into one token
    ("a <new1> <new1> dog", "<new1>", "dog", "a dog"),
    ("sks sks dog", "sks", "dog", "dog"),
    ("a <new1><new1> dog", "<new1>", "dog", "a dog"),
    ("a sks SKS-sks on the beach", "sks", "dog", "a dog on the beach"),
    ("sks and sks", "sks", "dog", "dog and dog"),
    # words and underscores that only contain the token stay
    ("sks_1 x", "sks", "dog", "dog_1 x"),
    ("masks_off", "sks", "dog", "masks_off"),
    ("a sksdog", "sks", "dog", "a sksdog"),
    # the class word after the token keeps its form and case, once
    ("a sks Dog", "sks", "dog", "a Dog"),
    ("two <new1> dogs' toys", "<new1>", "dog", "two dogs' toys"),
    ("a <new1> foxes den", "<new1>", "fox", "a foxes den"),
    ("many <new1> puppies", "<new1>", "puppy", "many puppies"),
    ("a [V] teddy  bear", "[V]", "teddy bear", "a teddy bear"),
    ("a <new1>dog", "<new1>", "dog", "a dog"),
    # a following word that only starts like the class word is another word
    ("a sks doghouse", "sks", "dog", "a dog doghouse"),
    ("a sks dogsled", "sks", "dog", "a dog dogsled"),
    # regex characters in tokens are literal
    ("a S* cat", "S*", "cat", "a cat"),
    ("a S cat", "S*", "cat", "a S cat"),
    ("a V+ and V", "V+", "vase", "a vase and V"),
    # no class word: the token is dropped; no token: the prompt as is
    ("a <new1> in snow", "<new1>", "", "a in snow"),
    ("a dog  in snow", "", "dog", "a dog in snow"),
    ("", "sks", "dog", ""),
]


@pytest.mark.parametrize("prompt,token,class_word,expected", CASES)
def test_scored_text(prompt, token, class_word, expected):
    assert scored_text(prompt, token, class_word) == expected


def test_token_is_stripped_and_class_words_normalised():
    assert scored_text("a sks dog", " sks ", " dog ") == "a dog"
    assert scored_text("a [V] thing", "[V]", "teddy   bear") == "a teddy bear thing"


def test_metric_families_parse_names_and_refuse_unknown_ones():
    from store.queries import InputError
    from store.scoring import parse_families

    assert parse_families(None) == ("clip", "dino")
    assert parse_families("dino, clip_t,dreamsim") == ("clip", "dino", "dreamsim")
    with pytest.raises(InputError, match="lpips"):
        parse_families("clip,lpips")
