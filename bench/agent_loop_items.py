"""Harder descriptions for bench/agent_loop.py, written for it from ENT knowledge, each with its truth.

Lay words, paraphrases, multi-finding text, a side named once inside a long sentence, descriptions that name
no region. Truth is a class ("ear-left", ...) where the text pins one down, else a region ("ear", "nose",
"throat", "larynx"); for a multi-finding text the truth is the finding named first by the request.
"""
from __future__ import annotations

HARD: list[tuple[str, str]] = [
    # lay words and paraphrases
    ("my left earhole is blocked with wax", "ear-left"),
    ("looking down the right ear canal at the eardrum", "ear-right"),
    ("inside of the left nostril, swollen lining", "nose-left"),
    ("right side of the nose, stuffy with a bent middle wall", "nose-right"),
    ("voice box with the cords pulled apart while breathing in", "vc-open"),
    ("voice box while the patient says eee, cords touching", "vc-closed"),
    ("back of the mouth with big tonsils", "throat"),
    ("the dangly bit at the back of the mouth and the tonsils", "throat"),
    ("drum of the right ear looks dull and pulled in", "ear-right"),
    ("left ear, a hole in the drum", "ear-left"),
    # a side named once inside a long sentence
    ("patient with a long history of itching and discharge who was examined today and the canal on the left "
     "side shows white debris over the drum", "ear-left"),
    ("after two weeks of congestion and facial pressure the endoscope was passed along the floor of the right "
     "nasal cavity to the middle meatus", "nose-right"),
    ("otoscopy performed in clinic because of hearing loss since the flight, tympanic membrane on the right "
     "retracted", "ear-right"),
    ("recurrent nosebleeds in a child, the anterior septum on the left side has crusts", "nose-left"),
    # multi-finding
    ("left ear with wax and a red canal wall", "ear-left"),
    ("right nasal cavity with a polyp and thick mucus", "nose-right"),
    ("larynx on inspiration, vocal folds abducted, mild redness of the arytenoids", "vc-open"),
    ("closed glottis on phonation with a small nodule", "vc-closed"),
    ("tonsils enlarged with white exudate and a red posterior pharyngeal wall", "throat"),
    ("right ear perforation with some discharge in the canal", "ear-right"),
    # no region named: region truth from what the finding implies
    ("perforated drum", "ear"),
    ("septal spur and swollen turbinates", "nose"),
    ("vocal cord nodules", "larynx"),
    ("tonsillitis", "throat"),
    ("cerumen impaction", "ear"),
    ("nasal polyps", "nose"),
    ("epiglottis and arytenoids", "larynx"),
    ("uvula and palate", "throat"),
    ("otitis externa with debris", "ear"),
    ("adenoid hypertrophy seen through the choana", "nose"),
    ("hoarse voice, looking at the glottis", "larynx"),
    ("sore throat with red pharynx", "throat"),
]
