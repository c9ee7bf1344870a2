"""The items of bench/words.py: descriptions written as ENT clinicians and patients write them, with truth.

Each item: (text, region, side, state, avoid). region/side/state are what the description asks for (side only
for an ear or a nose, state only for the vocal folds; None: not asked); `avoid` names the regions and findings
the text negates or calls normal, which must never become a query or a filter. Kept out of tests/ on purpose:
a measurement set, not a specification.
"""
from __future__ import annotations

NOTES = [
    ("History: 34-year-old with left otalgia and discharge for 2 weeks. Ears: right TM intact, canal clear. "
     "Left: canal oedematous with purulent debris. Nose: patent, no polyps. Please show images of the left ear "
     "canal with discharge.", "ear", "left", None, ("nose", "polyp")),
    ("Referred for recurrent epistaxis. Ears unremarkable. Throat: tonsils normal, no exudate. Anterior "
     "rhinoscopy shows a bleeding point on the right anterior septum. Please find images of the right nasal "
     "cavity with bleeding.", "nose", "right", None, ("ear", "throat")),
    ("Ears: tympanic membranes intact bilaterally. Nose: no discharge. Larynx: vocal cords mobile, no lesion. "
     "Oropharynx: grade 3 tonsils with exudate on both sides. Looking for images of enlarged tonsils.",
     "throat", None, None, ("ear", "larynx", "mass")),
    ("Hoarseness for 6 weeks. No stridor. Ears and nose normal. Laryngoscopy: vocal cords abduct fully on "
     "inspiration, no mass. Please retrieve images of the open glottis.", "larynx", None, "open",
     ("ear", "nose", "mass")),
    ("Complains of a blocked left ear. Right ear: canal clear, TM intact. Left ear: canal occluded by impacted "
     "wax. Nose and throat not examined. Need images of wax in the left ear.", "ear", "left", None,
     ("nose", "throat")),
    ("Chronic rhinosinusitis. Ears: normal. Throat: unremarkable. Nasal endoscopy: polyps filling the left middle "
     "meatus, right side clear. Please show the left nasal polyps.", "nose", "left", None, ("ear", "throat")),
    ("Otoscopy: left tympanic membrane intact with a normal cone of light. Right tympanic membrane shows a central "
     "perforation with a dry middle ear. No discharge. Please find images of the perforated right eardrum.",
     "ear", "right", None, ("discharge",)),
    ("Post-nasal drip for months. No otalgia. Ears: TMs intact. Nose: septum midline, no polyps, turbinates not "
     "enlarged. Please find images of the posterior pharyngeal wall with mucus.", "throat", None, None,
     ("ear", "nose", "polyp")),
    ("Voice assessment. Ears and nose unremarkable. Stroboscopy: the vocal folds adduct completely during "
     "phonation; no nodules. Please show closed vocal cords during phonation.", "larynx", None, "closed",
     ("ear", "nose", "mass")),
    ("History of ear discharge. Right ear: dry, TM intact. Left ear: otomycosis with white fungal debris in the "
     "canal. Please retrieve left ear images with fungal debris.", "ear", "left", None, ()),
    ("Sore throat for 5 days with fever. Ears normal. Nose clear. Oropharynx: erythematous tonsils with white "
     "exudate, uvula midline. Please find images of tonsillitis.", "throat", None, None, ("ear", "nose")),
    ("Nasal obstruction, worse on the right. Ears: intact TMs. Throat: normal. Endoscopy: septal deviation to the "
     "right with a spur; left nasal cavity patent. I need images of the right nasal cavity with septal "
     "deviation.", "nose", "right", None, ("ear", "throat")),
    ("Foreign body sensation in the throat. Nose unremarkable. Ears not examined. Laryngoscopy: vallecula clear, "
     "epiglottis normal, vocal cords open during quiet breathing with no lesion. Please find images of the open "
     "vocal cords.", "larynx", None, "open", ("ear", "nose", "mass")),
    ("Child with hearing loss. Nose: adenoids not enlarged. Throat: normal. Otoscopy: bilateral dull retracted "
     "tympanic membranes with fluid, worse on the left. Please find images of the left tympanic membrane with "
     "effusion.", "ear", "left", None, ("nose", "throat", "hypertrophy")),
    ("Follow-up after septoplasty. Ears clear. Throat unremarkable. Nasal endoscopy: crusting along the left "
     "septum, no synechiae, right side patent. Please show images of crusting in the left nasal cavity.",
     "nose", "left", None, ("ear", "throat")),
    ("Itchy ears. Left ear: canal clear, TM intact. Right ear: canal erythematous with flaky debris. No "
     "perforation. Please find images of the right external auditory canal.", "ear", "right", None,
     ("perforation",)),
    ("Globus. No dysphagia. Nose and ears normal. Laryngoscopy: interarytenoid oedema and erythema, vocal cords "
     "adduct normally on phonation. Please retrieve images of the closed glottis.", "larynx", None, "closed",
     ("ear", "nose")),
    ("Ear pain after swimming. Nose: patent bilaterally. Throat: clear. Ears: right canal swollen and tender, left "
     "canal normal. Looking for images of otitis externa in the right ear.", "ear", "right", None,
     ("nose", "throat")),
    ("Snoring and mouth breathing. Ears: normal. Nose: no polyps, septum straight. Oral exam: large tonsils "
     "touching in the midline. Please show images of the tonsils.", "throat", None, None, ("ear", "polyp")),
    ("Chronic cough. Ears and nose unremarkable. Oropharynx normal. Laryngoscopy: nodules at the junction of the "
     "anterior and middle third of both vocal folds, complete closure on phonation. Please find images of vocal "
     "cord nodules with the cords closed.", "larynx", None, "closed", ("ear", "nose", "throat")),
    ("Unilateral nasal discharge in a child. Ears normal. Throat: normal. Anterior rhinoscopy: foreign body in the "
     "left nostril with purulent discharge. Please find images of the left nose with a foreign body.",
     "nose", "left", None, ("ear", "throat")),
    ("Recurrent sinusitis. No facial swelling. Ears: TMs intact, no effusion. Nasal endoscopy: mucopurulent "
     "discharge from the right middle meatus, left meatus clear. Please retrieve images of pus in the right "
     "middle meatus.", "nose", "right", None, ("ear", "edema")),
]

TYPOS = [
    ("rigth eer drum perforaton", "ear", "right", None, ()),
    ("rigth ear wax", "ear", "right", None, ()),
    ("leftt nasall polip", "nose", "left", None, ()),
    ("tonsills swollen and red", "throat", None, None, ()),
    ("vocal chords closed", "larynx", None, "closed", ()),
    ("left eer canal with dischrage", "ear", "left", None, ()),
    ("rihgt nasal cavity with a polip", "nose", "right", None, ()),
    ("vocal cord abducton", "larynx", None, "open", ()),
    ("epiglotis and vocal cords during phonaton", "larynx", None, "closed", ()),
    ("perforated left tympanik membrane", "ear", "left", None, ()),
    ("nasal septum devation to the rigth", "nose", "right", None, ()),
    ("throaht with enlarged tonsils", "throat", None, None, ()),
    ("leftt ear otittis", "ear", "left", None, ()),
    ("larynx with vocal cords opened, no lesoin", "larynx", None, "open", ("mass",)),
    ("right nostirl bleeding", "nose", "right", None, ()),
    ("rigt ear canal with cerumin", "ear", "right", None, ()),
    ("tonsil hypertrophy, bak of the throat red", "throat", None, None, ()),
    ("lft nasal polyp", "nose", "left", None, ()),
    ("closd vocal folds", "larynx", None, "closed", ()),
    ("ear drum retracted on the lefft side", "ear", "left", None, ()),
]

LAY = [
    ("left nostril bleeding", "nose", "left", None, ()),
    ("inside the right earhole there is wax", "ear", "right", None, ()),
    ("voice box while breathing in", "larynx", None, "open", ()),
    ("back of the mouth looks red and swollen", "throat", None, None, ()),
    ("voice box when the patient is saying eee", "larynx", None, "closed", ()),
    ("hole in the eardrum on the right", "ear", "right", None, ()),
    ("snot in the left nose hole", "nose", "left", None, ()),
    ("swollen tonsils at the back of the throat", "throat", None, None, ()),
    ("the right side of the nose is blocked", "nose", "right", None, ()),
    ("lump on the voice box", "larynx", None, None, ()),
    ("earwax blocking the left ear", "ear", "left", None, ()),
    ("red throat with big tonsils", "throat", None, None, ()),
    ("vocal cords apart while breathing", "larynx", None, "open", ()),
    ("vocal cords pressed together while humming", "larynx", None, "closed", ()),
    ("gunk coming out of the right ear", "ear", "right", None, ()),
    ("growth inside the left side of the nose", "nose", "left", None, ()),
    ("the patient's right lughole", "ear", "right", None, ()),
    ("sore throat, white spots on the tonsils", "throat", None, None, ()),
    ("voice box while talking", "larynx", None, "closed", ()),
    ("crusty bits inside the left nostril", "nose", "left", None, ()),
]

CATEGORIES = {"clinic notes": NOTES, "typos": TYPOS, "lay words": LAY}
