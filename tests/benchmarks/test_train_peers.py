"""The peers' pixel count: what they must see at least, read from the shipped QGN's card."""

from benchmarks.train_peers import qgn_training_pixels
from model.weights import DEFAULT_WEIGHTS, load_card


def test_training_pixels_add_up_every_run_of_the_chain():
    first = {"steps": 10, "batch_size": 8, "crop": [256, 512]}
    second = {"steps": 3, "batch_size": 2, "crop": [512, 1024], "initialised_from": first}
    card = {
        "training": {"steps": 1, "batch_size": 1, "crop": [768, 1536], "initialised_from": second}
    }
    assert qgn_training_pixels(card) == 10 * 8 * 256 * 512 + 3 * 2 * 512 * 1024 + 768 * 1536
    # A run that counted its pixels (whole scenes differ in size) is taken at its count.
    whole = {
        "steps": 2,
        "batch_size": 1,
        "crop": [8, 8],
        "pixels": 12345,
        "initialised_from": card["training"],
    }
    assert qgn_training_pixels({"training": whole}) == qgn_training_pixels(card) + 12345


def test_the_shipped_weights_chain_is_read_to_its_first_run():
    card = load_card(DEFAULT_WEIGHTS)
    runs, run = 0, card["training"]
    while run:
        runs, run = runs + 1, run.get("initialised_from")
    last = card["training"]
    assert runs >= 2
    assert (
        qgn_training_pixels(card)
        > last["steps"] * last["batch_size"] * last["crop"][0] * last["crop"][1]
    )
