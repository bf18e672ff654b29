"""The notification mails' texts, per language: the mails client.pl sent (issuance,
revocation, OpenPGP), with the same content. A Python module rather than text files so that
the installed package carries them without package-data rules.

Each template: (subject, body), filled with str.format: {fname} the member's first name,
{name} the certificate's CN or the key's e-mail, {serial} the serial, {url} where to collect
it. A language is chosen by the first part of users.language (`de_DE` -> `de`); a language
without texts gets English, as client.pl fell back to its default locale.
"""
from __future__ import annotations

# The CAcert root certificate's fingerprints and the CA's OpenPGP key, as client.pl's mails
# named them (CommModule/client.pl HandleCerts, HandleGPG).
ROOT_FINGERPRINTS = ("Root cert fingerprint = A6:1B:37:5E:39:0D:9C:36:54:EE:BD:20:31:46:1F:6B\n"
                     "Root cert fingerprint = 135C EC36 F49C B8E9 3B1A B270 CD80 8846 76CE 8F33\n")
CA_GPG_KEY = ("pub 1024D/65D0FD58 2003-07-11 CA Cert Signing Authority (Root CA) <gpg@cacert.org>\n"
              "Key fingerprint = A31D 4F81 EF4E BD07 B456 FA04 D2BB 0D01 65D0 FD58\n")

TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "en": {
        "issued": ("[CAcert.org] Your certificate",
                   "Hi {fname},\n\n"
                   "You can collect your certificate for {name} by going to the following location:\n\n"
                   "{url}\n\n"
                   "If you have not imported CAcert's root certificate, please go to:\n"
                   "https://www.cacert.org/index.php?id=3\n"
                   + ROOT_FINGERPRINTS + "\n"
                   "Best regards\nCAcert.org Support!\n"),
        "revoked": ("[CAcert.org] Your certificate",
                    "Hi {fname},\n\n"
                    "Your certificate for '{name}' with the serial number '{serial}' has been revoked, "
                    "as per request.\n\n"
                    "Best regards\nCAcert.org Support!\n"),
        "openpgp": ("[CAcert.org] Your GPG/PGP Key",
                    "Hi {fname},\n\n"
                    "Your CAcert signed key for {name} is available online at:\n\n"
                    "{url}\n\n"
                    "To help improve the trust of CAcert in general, it's appreciated if you could also "
                    "sign our key and upload it to a key server. Below is a copy of our primary key "
                    "details:\n\n"
                    + CA_GPG_KEY + "\n"
                    "Best regards\nCAcert.org Support!\n"),
    },
    "de": {
        "issued": ("[CAcert.org] Ihr Zertifikat",
                   "Hallo {fname},\n\n"
                   "Sie können Ihr Zertifikat für {name} hier abholen:\n\n"
                   "{url}\n\n"
                   "Falls Sie das Wurzelzertifikat von CAcert noch nicht importiert haben, finden Sie es hier:\n"
                   "https://www.cacert.org/index.php?id=3\n"
                   + ROOT_FINGERPRINTS + "\n"
                   "Mit freundlichen Grüßen\nCAcert.org Support!\n"),
        "revoked": ("[CAcert.org] Ihr Zertifikat",
                    "Hallo {fname},\n\n"
                    "Ihr Zertifikat für '{name}' mit der Seriennummer '{serial}' wurde wie gewünscht "
                    "widerrufen.\n\n"
                    "Mit freundlichen Grüßen\nCAcert.org Support!\n"),
        "openpgp": ("[CAcert.org] Ihr GPG/PGP-Schlüssel",
                    "Hallo {fname},\n\n"
                    "Ihr von CAcert signierter Schlüssel für {name} steht hier bereit:\n\n"
                    "{url}\n\n"
                    "Um das Vertrauen in CAcert zu stärken, freuen wir uns, wenn Sie auch unseren "
                    "Schlüssel signieren und auf einen Keyserver hochladen. Unser Hauptschlüssel:\n\n"
                    + CA_GPG_KEY + "\n"
                    "Mit freundlichen Grüßen\nCAcert.org Support!\n"),
    },
}


def language_of(users_language: object) -> str:
    """users.language (`de_DE`, `en_AU`, `de`, '') -> a TEMPLATES key."""
    code = str(users_language or "").strip().split("_")[0].split(".")[0].lower()
    return code if code in TEMPLATES else "en"


def render(kind: str, users_language: object, **values: str) -> tuple[str, str]:
    subject, body = TEMPLATES[language_of(users_language)][kind]
    return subject, body.format(**values)
