"""A labelled retrieval set: stored facts, paraphrasing queries and distractors.

Plain Python data (no downloads, no randomness), used to measure how well
recall finds the fact a question is about: vector only, keyword only and fused
(see :mod:`chrysalis_memory.bench.recall_eval`).

* :data:`FACTS` — short facts across several domains (user preferences, ops
  runbooks, geography, code, customer notes, science, HR and finance, history,
  cooking). A fact is a *target* when at least one query is about it; every
  other fact is a *distractor*: it was written to share words with some query
  (same person, same system, same topic, a near-identical identifier) while
  not answering it.
* :data:`QUERIES` — questions a person would ask, each paraphrasing one target
  fact (rarely two), in four categories:

  ``shared-words`` (a)
      A rewording that keeps a few of the fact's key words.
  ``morphology`` (b)
      The link is a morphological variant (``Australian``/``Australia``), a
      typo (``passwrod``), a joined or split compound (``darkmode``,
      ``on-call``/``oncall``) or a spelling variant (``krona``/``króna``):
      character n-grams can still match, exact stemmed tokens often cannot.
  ``rare-keyword`` (c)
      Many common words are shared with many facts; one rare exact token (an
      error code, a ticket number, a host, a name, ``02:00 UTC``) decides.
  ``semantic`` (d)
      A paraphrase with (almost) no word in common with the fact
      (``financial year begin`` for ``fiscal year starts``): lexical methods
      are expected to fail; listed so that a real embedding model has
      something to show.

The set was written before any retrieval method was run on it and is not
tuned to favour one. Bump :data:`RECALL_SET_VERSION` whenever a fact, query or
label changes, so that figures from different versions are not compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "CATEGORIES",
    "DISTRACTOR_IDS",
    "FACTS",
    "FACTS_BY_ID",
    "QUERIES",
    "RECALL_SET_VERSION",
    "TARGET_IDS",
    "Category",
    "Fact",
    "LabelledQuery",
]

RECALL_SET_VERSION: Final = "1"

Category = Literal["shared-words", "morphology", "rare-keyword", "semantic"]
CATEGORIES: Final[tuple[Category, ...]] = ("shared-words", "morphology", "rare-keyword", "semantic")


@dataclass(frozen=True, slots=True)
class Fact:
    """One stored fact: a stable id, a domain and the text that is stored."""

    id: str
    domain: str
    text: str


@dataclass(frozen=True, slots=True)
class LabelledQuery:
    """A query, the ids of the facts that answer it, and its category."""

    id: str
    category: Category
    text: str
    relevant: tuple[str, ...]


def _f(fact_id: str, domain: str, text: str) -> Fact:
    return Fact(fact_id, domain, text)


def _q(query_id: str, category: Category, text: str, *relevant: str) -> LabelledQuery:
    return LabelledQuery(query_id, category, text, relevant)


FACTS: Final[list[Fact]] = [
    # --- user preferences -----------------------------------------------------------
    _f(
        "pref-maya-dark-mode",
        "preferences",
        "Maya prefers dark mode in her code editor and in the terminal.",
    ),
    _f(
        "pref-maya-light-slides",
        "preferences",
        "Maya switches to a light theme when she presents slides to customers.",
    ),
    _f(
        "pref-tom-font",
        "preferences",
        "Tom set his code editor and terminal font to JetBrains Mono at size 14.",
    ),
    _f(
        "pref-priya-meetings",
        "preferences",
        "Priya works from Bangalore and only accepts meetings that start before 11:00 "
        "her local time.",
    ),
    _f(
        "pref-priya-planning",
        "preferences",
        "Priya's team holds its planning meeting every Monday at 09:30.",
    ),
    _f(
        "pref-carlos-meetings",
        "preferences",
        "Carlos in Madrid declines meetings that start after 17:00 local time.",
    ),
    _f(
        "pref-dana-coffee", "preferences", "Dana takes her coffee black, with no sugar and no milk."
    ),
    _f("pref-dana-tea", "preferences", "Dana drinks green tea with honey in the afternoon."),
    _f(
        "pref-office-coffee",
        "preferences",
        "The office coffee order goes to Bean There every Friday; most of the team wants "
        "oat milk lattes.",
    ),
    _f(
        "pref-sam-notifications",
        "preferences",
        "Sam wants deployment notifications in Slack, never by email.",
    ),
    _f(
        "pref-sam-digest",
        "preferences",
        "Sam reads the weekly email digest of incident reports on Monday mornings.",
    ),
    _f(
        "pref-slack-quiet-hours",
        "preferences",
        "Slack notifications are muted for the whole team between 22:00 and 07:00.",
    ),
    _f(
        "pref-lena-diet",
        "preferences",
        "Lena is vegetarian and allergic to peanuts, so order her meals without nuts.",
    ),
    _f(
        "pref-lena-window-seat",
        "preferences",
        "Lena prefers a window seat on flights longer than three hours.",
    ),
    _f(
        "pref-lena-hotel",
        "preferences",
        "Book Lena's hotels within walking distance of the office; she does not rent cars.",
    ),
    _f(
        "pref-team-lunch",
        "preferences",
        "For the Thursday team lunch, order pizza and a vegetarian salad.",
    ),
    _f(
        "pref-omar-cats",
        "preferences",
        "Omar is allergic to cats and works from home on days the office cat is in.",
    ),
    _f(
        "pref-jonas-review-language",
        "preferences",
        "Jonas wants code review comments written in English, even though he is based in Berlin.",
    ),
    _f("pref-alex-pronouns", "preferences", "Alex uses they/them pronouns."),
    _f(
        "pref-alex-name",
        "preferences",
        "Alex prefers to be called Alex, not Alexander, in emails.",
    ),
    _f(
        "pref-ravi-docs",
        "preferences",
        "Ravi wants design documents shared as Google Docs rather than PDFs so he can "
        "comment inline.",
    ),
    _f(
        "pref-ravi-standup",
        "preferences",
        "Ravi skips the daily standup on Wednesdays because of a recurring customer call.",
    ),
    # --- ops runbooks ---------------------------------------------------------------
    _f(
        "ops-db-credential-rotation",
        "ops",
        "Production database credentials are rotated automatically every 90 days by the "
        "vault-rotator job.",
    ),
    _f(
        "ops-api-key-rotation",
        "ops",
        "Partner API keys are rotated by hand every 180 days by the platform team.",
    ),
    _f(
        "ops-db-backup-nightly",
        "ops",
        "The production database is backed up every night to an S3 bucket in eu-west-1.",
    ),
    _f(
        "ops-db-restore",
        "ops",
        "To restore the orders database from a backup, run `restore-db --snapshot latest` "
        "on the bastion host bast-02.",
    ),
    _f(
        "ops-bastion-staging",
        "ops",
        "The bastion host bast-01 is for staging only and has no access to production.",
    ),
    _f(
        "ops-backup-retention",
        "ops",
        "Database backups are kept for 35 days and then moved to cold storage.",
    ),
    _f(
        "ops-db-version",
        "ops",
        "The production database runs PostgreSQL 15 on a three-node Patroni cluster.",
    ),
    _f(
        "ops-oncall-handoff",
        "ops",
        "The on-call handoff happens every Tuesday at 10:00 UTC in the #ops-handoff channel.",
    ),
    _f(
        "ops-oncall-ack",
        "ops",
        "On-call engineers must acknowledge a page within 5 minutes or it escalates to the "
        "secondary.",
    ),
    _f(
        "ops-oncall-weekend",
        "ops",
        "Weekend on-call shifts are compensated with a day off the following week.",
    ),
    _f(
        "ops-acme-4471",
        "ops",
        "Error ACME-4471 means the payment gateway rejected our merchant certificate; renew "
        "the certificate in the gateway console.",
    ),
    _f(
        "ops-acme-4417",
        "ops",
        "Error ACME-4417 means the payment gateway timed out; retry the charge after 30 seconds.",
    ),
    _f(
        "ops-acme-4711",
        "ops",
        "Error ACME-4711 means the payment gateway declined the card as suspected fraud; "
        "do not retry it.",
    ),
    _f(
        "ops-gateway-dashboard",
        "ops",
        "Payment gateway errors are logged to the payments-gateway dashboard in Grafana.",
    ),
    _f(
        "ops-website-certs",
        "ops",
        "TLS certificates for the public website are renewed by cert-manager 30 days before "
        "they expire.",
    ),
    _f(
        "ops-deploy-freeze",
        "ops",
        "There is a deploy freeze every Friday after 15:00 and during the last week of December.",
    ),
    _f(
        "ops-release-train",
        "ops",
        "Deploys to production go out with the release train at 11:00 and 16:00 on weekdays.",
    ),
    _f(
        "ops-rollback",
        "ops",
        "To roll back a bad deploy, run `shipit rollback` with the previous release tag.",
    ),
    _f(
        "ops-checkout-crashloop",
        "ops",
        "When a checkout pod is in CrashLoopBackOff, check the checkout-env config map for a "
        "missing STRIPE_KEY.",
    ),
    _f(
        "ops-checkout-autoscale",
        "ops",
        "The checkout deployment autoscales between 4 and 20 pods based on CPU usage.",
    ),
    _f(
        "ops-k8s-namespaces",
        "ops",
        "Each team owns one Kubernetes namespace; the checkout namespace belongs to the "
        "payments team.",
    ),
    _f(
        "ops-ingest-disk-full",
        "ops",
        "If /var/log fills up on the ingest servers, run logrotate -f and delete archives "
        "older than 7 days.",
    ),
    _f("ops-disk-alert", "ops", "The disk usage alert fires at 85 percent on every server."),
    _f(
        "ops-ingest-logs-loki",
        "ops",
        "Logs from the ingest servers are shipped to Loki within a minute.",
    ),
    _f(
        "ops-ssh-teleport",
        "ops",
        "SSH access to production servers goes through Teleport and expires after 8 hours.",
    ),
    _f(
        "ops-vpn",
        "ops",
        "The office VPN uses WireGuard; request access from the IT helpdesk.",
    ),
    _f(
        "ops-ssh-keys",
        "ops",
        "Personal SSH keys must be ed25519 and registered in the staff directory.",
    ),
    _f(
        "ops-checkout-latency-slo",
        "ops",
        "The checkout API latency SLO is 300 ms at p99 over a 28-day window.",
    ),
    _f(
        "ops-checkout-latency-alert",
        "ops",
        "The checkout API latency alert pages on-call when p95 latency stays above 500 ms "
        "for 10 minutes.",
    ),
    _f(
        "ops-checkout-availability-slo",
        "ops",
        "The checkout API availability SLO is 99.95 percent over a 28-day window.",
    ),
    _f("ops-search-latency", "ops", "The search API latency target is 150 ms at p95."),
    _f(
        "ops-dns-ttl",
        "ops",
        "Public DNS records are managed in Route 53 with a default TTL of 300 seconds.",
    ),
    _f(
        "ops-dns-internal",
        "ops",
        "Internal DNS for corp names is served by two Unbound resolvers.",
    ),
    _f(
        "ops-billing-report-cron",
        "ops",
        "The nightly billing report cron job runs at 02:00 UTC on worker-7.",
    ),
    _f(
        "ops-cleanup-cron",
        "ops",
        "The nightly cleanup cron job runs at 03:30 UTC and purges temporary files.",
    ),
    _f(
        "ops-usage-report-job",
        "ops",
        "The weekly usage report job runs at 02:00 CET on Mondays.",
    ),
    _f(
        "ops-billing-email",
        "ops",
        "Billing reports are emailed to finance on the first working day of each month.",
    ),
    _f(
        "ops-kafka-lag",
        "ops",
        "If consumer lag on the orders-events Kafka topic goes above 10,000 messages, scale up "
        "the order-consumer deployment.",
    ),
    _f("ops-kafka-retention", "ops", "Kafka topics keep messages for 7 days by default."),
    _f(
        "ops-patching",
        "ops",
        "Production servers are patched on the second Tuesday of every month.",
    ),
    # --- geography ------------------------------------------------------------------
    _f("geo-canberra", "geography", "Canberra, not Sydney, is the capital of Australia."),
    _f("geo-sydney", "geography", "Sydney is the largest city in Australia by population."),
    _f("geo-wellington", "geography", "Wellington is the capital of New Zealand."),
    _f(
        "geo-nile-mouth",
        "geography",
        "The Nile flows north and empties into the Mediterranean Sea.",
    ),
    _f(
        "geo-amazon",
        "geography",
        "The Amazon carries more water than any other river and empties into the Atlantic Ocean.",
    ),
    _f(
        "geo-nile-length",
        "geography",
        "The Nile is about 6,650 km long and flows through eleven countries.",
    ),
    _f(
        "geo-everest-height",
        "geography",
        "Mount Everest is 8,849 metres high and sits on the border between Nepal and China.",
    ),
    _f(
        "geo-k2",
        "geography",
        "K2, the second highest mountain on Earth, lies on the border between Pakistan and China.",
    ),
    _f(
        "geo-denali",
        "geography",
        "Denali is the highest mountain in North America at 6,190 metres.",
    ),
    _f(
        "geo-baikal",
        "geography",
        "Lake Baikal in Siberia is the deepest lake in the world, about 1,642 metres deep.",
    ),
    _f("geo-caspian", "geography", "The Caspian Sea is the largest lake in the world by area."),
    _f(
        "geo-superior",
        "geography",
        "Lake Superior is the largest freshwater lake by surface area.",
    ),
    _f("geo-iceland-currency", "geography", "Iceland uses the Icelandic króna, not the euro."),
    _f(
        "geo-denmark-currency",
        "geography",
        "Denmark uses the Danish krone and is not in the eurozone.",
    ),
    _f("geo-finland-euro", "geography", "Finland adopted the euro in 1999."),
    _f(
        "geo-swiss-languages",
        "geography",
        "Switzerland has four national languages: German, French, Italian and Romansh.",
    ),
    _f(
        "geo-belgium-languages",
        "geography",
        "Belgium has three official languages: Dutch, French and German.",
    ),
    _f(
        "geo-canada-languages",
        "geography",
        "Canada's official languages are English and French.",
    ),
    _f(
        "geo-tokyo-population",
        "geography",
        "Tokyo is the most populous metropolitan area in the world, with about 37 million people.",
    ),
    _f(
        "geo-kyoto-capital",
        "geography",
        "Kyoto was the capital of Japan for more than a thousand years before Tokyo.",
    ),
    _f("geo-sahara", "geography", "The Sahara is the largest hot desert in the world."),
    # --- code -----------------------------------------------------------------------
    _f(
        "code-payments-sdk-retries",
        "code",
        "The HTTP client in payments-sdk retries failed requests 3 times with exponential "
        "backoff starting at 200 ms.",
    ),
    _f(
        "code-payments-sdk-timeout",
        "code",
        "The HTTP client in payments-sdk times out requests after 10 seconds.",
    ),
    _f(
        "code-webhook-retries",
        "code",
        "Failed webhook deliveries are retried by the queue worker for up to 24 hours.",
    ),
    _f(
        "code-pipeline-python",
        "code",
        "The data pipeline repository requires Python 3.11 because it uses TaskGroup and "
        "ExceptionGroup.",
    ),
    _f(
        "code-ml-python",
        "code",
        "The ML training repository is pinned to Python 3.9 because of an old CUDA toolkit.",
    ),
    _f(
        "code-frontend-node",
        "code",
        "The web frontend repository pins Node 20 in its .nvmrc file.",
    ),
    _f(
        "code-pipeline-ci",
        "code",
        "The data pipeline repository runs ruff and mypy in CI on every pull request.",
    ),
    _f(
        "code-feature-flags-cache",
        "code",
        "Feature flags are read from LaunchDarkly at startup and cached for 60 seconds.",
    ),
    _f(
        "code-config-env",
        "code",
        "Service configuration is read from environment variables at startup.",
    ),
    _f(
        "code-flag-cleanup",
        "code",
        "Feature flags older than 90 days are removed in the quarterly cleanup.",
    ),
    _f(
        "code-orders-utc",
        "code",
        "All timestamps in the orders service are stored in UTC as ISO 8601 strings.",
    ),
    _f(
        "code-frontend-local-time",
        "code",
        "The web frontend shows timestamps in the user's local time zone.",
    ),
    _f(
        "code-orders-ulid",
        "code",
        "Order IDs in the orders service are ULIDs, not auto-increment integers.",
    ),
    _f(
        "code-session-redis",
        "code",
        "Session data is cached in Redis with a TTL of 30 minutes under the key prefix sess:.",
    ),
    _f(
        "code-cdn-cache",
        "code",
        "Static assets are cached at the CDN for one year and busted by file hash.",
    ),
    _f(
        "code-redis-cluster",
        "code",
        "The Redis cluster runs three primaries and three replicas in eu-west-1.",
    ),
    _f(
        "code-migrations-alembic",
        "code",
        "Database schema migrations are written with Alembic and must stay backwards "
        "compatible for one release.",
    ),
    _f(
        "code-migrations-pipeline",
        "code",
        "Migrations run automatically in the deploy pipeline before the new pods start.",
    ),
    _f(
        "code-sqlalchemy",
        "code",
        "The API uses SQLAlchemy 2.0 in async mode with the asyncpg driver.",
    ),
    _f(
        "code-api-pagination",
        "code",
        "The public REST API paginates with opaque cursors; the page size defaults to 50 and "
        "is capped at 200.",
    ),
    _f(
        "code-api-rate-limit",
        "code",
        "The public REST API allows 600 requests per minute per API key.",
    ),
    _f(
        "code-api-versions",
        "code",
        "Public API versions are named by date, for example 2024-06-01.",
    ),
    _f(
        "code-logging-pii",
        "code",
        "Services log JSON to stdout and must never log card numbers or CVV codes.",
    ),
    _f(
        "code-log-level",
        "code",
        "The default log level is INFO in production and DEBUG in staging.",
    ),
    _f(
        "code-e1207",
        "code",
        "Build error E1207 in the mobile app means the signing keystore password is wrong.",
    ),
    _f(
        "code-e1270",
        "code",
        "Build error E1270 in the mobile app means the Gradle cache is corrupt; clear "
        "~/.gradle/caches.",
    ),
    _f(
        "code-mobile-ci",
        "code",
        "Mobile app builds run on the macOS runners in CI and take about 25 minutes.",
    ),
    # --- customer notes -------------------------------------------------------------
    _f(
        "cust-acme-renewal",
        "customers",
        "Acme Corp's contract renews on 1 March; their champion is Jo Park in procurement.",
    ),
    _f(
        "cust-acme-csv",
        "customers",
        "Acme Corp opened a ticket in January about slow CSV exports.",
    ),
    _f(
        "cust-globex-renewal",
        "customers",
        "Globex's contract renews on 1 September and includes premium support.",
    ),
    _f(
        "cust-initech-sso",
        "customers",
        "Initech requires SAML single sign-on through Okta for all 400 of their seats.",
    ),
    _f(
        "cust-sso-enterprise",
        "customers",
        "Single sign-on is available on the Enterprise plan with SAML or OIDC.",
    ),
    _f(
        "cust-initech-invoices",
        "customers",
        "Initech pays invoices by bank transfer within 45 days.",
    ),
    _f(
        "cust-umbrella-churn-risk",
        "customers",
        "Umbrella Health is at risk of churning because their data export jobs failed three "
        "times in May.",
    ),
    _f(
        "cust-umbrella-seats",
        "customers",
        "Umbrella Health wants to add 50 seats for their new clinic in Porto.",
    ),
    _f(
        "cust-export-fix",
        "customers",
        "A bug that made data export jobs fail was fixed in release 4.12.",
    ),
    _f(
        "cust-soylent-discount",
        "customers",
        "Soylent Labs was promised a 15 percent discount if they sign a three-year deal.",
    ),
    _f(
        "cust-discount-policy",
        "customers",
        "Sales may give discounts of up to 10 percent without approval from finance.",
    ),
    _f(
        "cust-ticket-88213",
        "customers",
        "Ticket #88213: the customer's webhook endpoint returns 410 Gone, so deliveries to it "
        "are paused.",
    ),
    _f(
        "cust-ticket-88231",
        "customers",
        "Ticket #88231: the customer asked for webhook retries to be extended to 48 hours.",
    ),
    _f(
        "cust-webhook-signing",
        "customers",
        "Webhook deliveries are signed with HMAC-SHA256 in the X-Signature header.",
    ),
    _f(
        "cust-hooli-contact",
        "customers",
        "Hooli's support contact is in Singapore, so call them between 09:00 and 12:00 UTC.",
    ),
    _f(
        "cust-support-hours",
        "customers",
        "Our support desk is staffed from 08:00 to 20:00 UTC on weekdays.",
    ),
    _f(
        "cust-stark-onprem",
        "customers",
        "Stark Industries can only run the on-premises edition because of export regulations.",
    ),
    _f(
        "cust-onprem-releases",
        "customers",
        "The on-premises edition ships quarterly and lags the cloud edition by one release.",
    ),
    _f(
        "cust-wayne-billing",
        "customers",
        "Wayne Enterprises is billed annually in USD and wants invoices sent to ap@wayne.example.",
    ),
    # --- science --------------------------------------------------------------------
    _f(
        "sci-water-boiling",
        "science",
        "At sea level water boils at 100 °C; on the summit of Everest it boils at about 70 °C.",
    ),
    _f(
        "sci-salt-water-freezing",
        "science",
        "Salt water freezes at about -2 °C, lower than fresh water.",
    ),
    _f("sci-light-speed", "science", "Light travels about 299,792 km per second in a vacuum."),
    _f(
        "sci-sound-speed",
        "science",
        "Sound travels about 343 metres per second in air at 20 °C.",
    ),
    _f(
        "sci-sunlight-time",
        "science",
        "Sunlight takes about 8 minutes and 20 seconds to reach the Earth.",
    ),
    _f(
        "sci-dna-pairs",
        "science",
        "DNA is a double helix in which adenine pairs with thymine and guanine pairs with "
        "cytosine.",
    ),
    _f("sci-rna-uracil", "science", "RNA uses uracil instead of thymine."),
    _f(
        "sci-photosynthesis",
        "science",
        "Photosynthesis turns carbon dioxide and water into glucose and oxygen using light energy.",
    ),
    _f(
        "sci-respiration",
        "science",
        "Cellular respiration turns glucose and oxygen into carbon dioxide, water and energy.",
    ),
    _f(
        "sci-mitochondria",
        "science",
        "Mitochondria produce most of a cell's ATP through oxidative phosphorylation.",
    ),
    _f("sci-ribosomes", "science", "Ribosomes build proteins by translating messenger RNA."),
    _f(
        "sci-jupiter",
        "science",
        "Jupiter is the largest planet in the solar system and has at least 95 known moons.",
    ),
    _f(
        "sci-saturn-moons",
        "science",
        "Saturn has the most known moons of any planet: 146 as of 2023.",
    ),
    _f("sci-mercury", "science", "Mercury is the planet closest to the Sun and has no moons."),
    # --- HR, finance and security ---------------------------------------------------
    _f(
        "hr-parental-leave",
        "hr",
        "Parental leave is 20 weeks at full pay for every parent after six months of employment.",
    ),
    _f(
        "hr-vacation",
        "hr",
        "Employees get 28 days of paid vacation per year plus public holidays.",
    ),
    _f("hr-sick-leave", "hr", "Sick leave needs no doctor's note for the first three days."),
    _f(
        "fin-meal-limit",
        "finance",
        "Meals on business travel are reimbursed up to 60 EUR per day with receipts.",
    ),
    _f(
        "fin-expensify",
        "finance",
        "Submit expense reports in Expensify within 30 days of the purchase.",
    ),
    _f(
        "fin-travel-booking",
        "finance",
        "Business travel must be booked through Navan; flights over 6 hours may be business class.",
    ),
    _f(
        "fin-fiscal-year",
        "finance",
        "Our fiscal year starts on 1 February and ends on 31 January.",
    ),
    _f(
        "fin-quarter-close",
        "finance",
        "The books close five working days after each quarter ends.",
    ),
    _f(
        "sec-password-length",
        "security",
        "Staff passwords must be at least 14 characters long and are checked against the "
        "HaveIBeenPwned list.",
    ),
    _f(
        "sec-mfa-admins",
        "security",
        "Multi-factor authentication with a hardware key is required for admin accounts.",
    ),
    _f(
        "sec-password-manager",
        "security",
        "The company password manager is 1Password; share credentials only through shared vaults.",
    ),
    # --- history and cooking --------------------------------------------------------
    _f("hist-berlin-wall", "history", "The Berlin Wall fell on 9 November 1989."),
    _f("hist-reunification", "history", "German reunification took place on 3 October 1990."),
    _f(
        "hist-apollo-11",
        "history",
        "Apollo 11 landed on the Moon on 20 July 1969, and Neil Armstrong stepped out first.",
    ),
    _f(
        "hist-apollo-13",
        "history",
        "Apollo 13 had to abort its Moon landing in 1970 after an oxygen tank exploded.",
    ),
    _f(
        "hist-apollo-17",
        "history",
        "Apollo 17, in December 1972, was the last crewed Moon landing.",
    ),
    _f(
        "cook-sourdough",
        "cooking",
        "The sourdough recipe needs 500 g flour, 350 g water, 100 g starter and 10 g salt.",
    ),
    _f(
        "cook-pizza-dough",
        "cooking",
        "The pizza dough uses 00 flour and 65 percent water and rests for 24 hours.",
    ),
]

QUERIES: Final[list[LabelledQuery]] = [
    # --- user preferences -----------------------------------------------------------
    _q(
        "q-maya-darkmode",
        "morphology",
        "Does Maya want darkmode in her editor?",
        "pref-maya-dark-mode",
    ),
    _q(
        "q-maya-scheme",
        "shared-words",
        "What colour scheme should Maya's terminal use?",
        "pref-maya-dark-mode",
    ),
    _q(
        "q-priya-latest",
        "shared-words",
        "What is the latest start time Priya accepts for a meeting?",
        "pref-priya-meetings",
    ),
    _q("q-dana-coffee", "shared-words", "How does Dana like her coffee?", "pref-dana-coffee"),
    _q(
        "q-dana-espresso",
        "semantic",
        "Does Dana put anything in her espresso?",
        "pref-dana-coffee",
    ),
    _q(
        "q-sam-notifs",
        "morphology",
        "Should Sam get deploy notifs by e-mail?",
        "pref-sam-notifications",
    ),
    _q("q-lena-allergy", "morphology", "What is Lena's allergy?", "pref-lena-diet"),
    _q(
        "q-lena-seat",
        "shared-words",
        "Aisle or window seat for Lena on long flights?",
        "pref-lena-window-seat",
    ),
    _q(
        "q-lena-drive",
        "semantic",
        "Does Lena drive herself when she travels?",
        "pref-lena-hotel",
    ),
    _q(
        "q-jonas-language",
        "shared-words",
        "Which language should review comments for Jonas be written in?",
        "pref-jonas-review-language",
    ),
    _q("q-alex-pronouns", "shared-words", "What pronouns does Alex use?", "pref-alex-pronouns"),
    _q("q-ravi-docs", "morphology", "Ravi's preferred format for design docs", "pref-ravi-docs"),
    # --- ops runbooks ---------------------------------------------------------------
    _q(
        "q-db-rotation",
        "morphology",
        "How often does the DB password rotation happen in prod?",
        "ops-db-credential-rotation",
    ),
    _q(
        "q-vault-rotator",
        "rare-keyword",
        "What does the vault-rotator job do?",
        "ops-db-credential-rotation",
    ),
    _q("q-oncall-handoff", "morphology", "When is the oncall hand-off?", "ops-oncall-handoff"),
    _q(
        "q-restore-orders",
        "shared-words",
        "Steps to restore the orders database from a backup",
        "ops-db-restore",
    ),
    _q("q-bast-02", "rare-keyword", "What do we run on bast-02?", "ops-db-restore"),
    _q(
        "q-acme-4471",
        "rare-keyword",
        "What does payment gateway error ACME-4471 mean and how do I fix it?",
        "ops-acme-4471",
    ),
    _q(
        "q-acme-4417",
        "rare-keyword",
        "A customer sees ACME-4417 from the payment gateway at checkout, what should we do?",
        "ops-acme-4417",
    ),
    _q(
        "q-freeze-friday",
        "morphology",
        "Can I ship to production on Friday afternoon or is there a freze?",
        "ops-deploy-freeze",
    ),
    _q("q-deploys-frozen", "morphology", "When are deploys frozen?", "ops-deploy-freeze"),
    _q(
        "q-crashloop",
        "rare-keyword",
        "checkout pods stuck in CrashLoopBackOff, what should I check?",
        "ops-checkout-crashloop",
    ),
    _q(
        "q-kubernets-crash",
        "morphology",
        "kubernets checkout pod keeps crash looping on startup",
        "ops-checkout-crashloop",
    ),
    _q(
        "q-ingest-disk",
        "shared-words",
        "The ingest servers ran out of disk space because of logs; what do I do?",
        "ops-ingest-disk-full",
    ),
    _q("q-teleport", "rare-keyword", "How long does Teleport access last?", "ops-ssh-teleport"),
    _q(
        "q-ssh-prod",
        "shared-words",
        "How do I get SSH access to the production servers?",
        "ops-ssh-teleport",
    ),
    _q(
        "q-cert-renewal",
        "shared-words",
        "How early are the public website's TLS certificates renewed?",
        "ops-website-certs",
    ),
    _q(
        "q-p99-objective",
        "rare-keyword",
        "What is the p99 latency objective for the checkout API?",
        "ops-checkout-latency-slo",
    ),
    _q("q-dns-ttl", "shared-words", "What TTL do our public DNS records have?", "ops-dns-ttl"),
    _q(
        "q-0200-utc", "rare-keyword", "Which cron job runs at 02:00 UTC?", "ops-billing-report-cron"
    ),
    _q(
        "q-billing-cronjob",
        "morphology",
        "What time does the nightly billing-report cronjob run?",
        "ops-billing-report-cron",
    ),
    _q("q-worker-7", "rare-keyword", "What runs on worker-7?", "ops-billing-report-cron"),
    _q(
        "q-kafka-lag",
        "shared-words",
        "What should I do when Kafka consumer lag grows on the orders events topic?",
        "ops-kafka-lag",
    ),
    # --- geography ------------------------------------------------------------------
    _q(
        "q-australian-capital",
        "morphology",
        "What is the Australian capital city?",
        "geo-canberra",
    ),
    _q(
        "q-nile-sea",
        "shared-words",
        "Which sea does the river Nile flow into?",
        "geo-nile-mouth",
    ),
    _q("q-everest-meters", "morphology", "How tall is Everest in meters?", "geo-everest-height"),
    _q("q-8849", "rare-keyword", "Which mountain is 8,849 m high?", "geo-everest-height"),
    _q("q-siberian-lake", "morphology", "Siberian lake depth record", "geo-baikal"),
    _q(
        "q-iceland-krona",
        "morphology",
        "Which currency do they use in Iceland, the krona?",
        "geo-iceland-currency",
    ),
    _q(
        "q-romansh",
        "rare-keyword",
        "In which country is Romansh a national language?",
        "geo-swiss-languages",
    ),
    _q(
        "q-swiss-langauges",
        "morphology",
        "How many official langauges does the Swiss confederation have?",
        "geo-swiss-languages",
    ),
    _q(
        "q-tokyo-metro",
        "morphology",
        "Population of the Tokyo metro area",
        "geo-tokyo-population",
    ),
    # --- code -----------------------------------------------------------------------
    _q(
        "q-sdk-retries",
        "shared-words",
        "How many retry attempts does the payments SDK HTTP client make?",
        "code-payments-sdk-retries",
    ),
    _q(
        "q-paymentssdk-backoff",
        "morphology",
        "backoff policy of the paymentsSDK client",
        "code-payments-sdk-retries",
    ),
    _q(
        "q-taskgroup",
        "rare-keyword",
        "Which Python version do we need for TaskGroup?",
        "code-pipeline-python",
    ),
    _q(
        "q-pipeline-python",
        "shared-words",
        "Minimum Python version for the data pipeline repo",
        "code-pipeline-python",
    ),
    _q(
        "q-featureflag-cache",
        "morphology",
        "How long are featureflag values cached?",
        "code-feature-flags-cache",
    ),
    _q(
        "q-order-timezone",
        "morphology",
        "Which timezone are order timestamps stored in?",
        "code-orders-utc",
    ),
    _q(
        "q-order-ids",
        "shared-words",
        "What kind of IDs does the orders service use?",
        "code-orders-ulid",
    ),
    _q(
        "q-session-redis",
        "shared-words",
        "How long do sessions stay in the Redis cache?",
        "code-session-redis",
    ),
    _q(
        "q-migration-rules",
        "shared-words",
        "Rules for writing a DB schema migration: does it have to be backward-compatible?",
        "code-migrations-alembic",
    ),
    _q(
        "q-max-page-size",
        "shared-words",
        "What is the maximum page size on the public API?",
        "code-api-pagination",
    ),
    _q("q-pagesize", "morphology", "REST api paging: default pagesize?", "code-api-pagination"),
    _q("q-log-cards", "shared-words", "Is it OK to log credit card numbers?", "code-logging-pii"),
    _q("q-e1207", "rare-keyword", "Mobile build fails with E1207, what's wrong?", "code-e1207"),
    _q("q-e1270", "rare-keyword", "How do I fix mobile app build error E1270?", "code-e1270"),
    # --- customer notes -------------------------------------------------------------
    _q("q-acme-renew", "shared-words", "When does Acme's contract renew?", "cust-acme-renewal"),
    _q("q-jo-park", "rare-keyword", "Which customer does Jo Park work for?", "cust-acme-renewal"),
    _q("q-initech-okta", "shared-words", "Does Initech need SSO via Okta?", "cust-initech-sso"),
    _q(
        "q-initech-singlesignon",
        "morphology",
        "Initech singlesignon requirements",
        "cust-initech-sso",
    ),
    _q(
        "q-umbrella-cancel",
        "semantic",
        "Is Umbrella Health likely to cancel?",
        "cust-umbrella-churn-risk",
    ),
    _q(
        "q-umbrella-churn",
        "shared-words",
        "Why might Umbrella Health churn?",
        "cust-umbrella-churn-risk",
    ),
    _q(
        "q-soylent",
        "rare-keyword",
        "What discount did we promise Soylent?",
        "cust-soylent-discount",
    ),
    _q(
        "q-88213",
        "rare-keyword",
        "Status of ticket 88213 about webhook deliveries",
        "cust-ticket-88213",
    ),
    _q(
        "q-hooli-phone",
        "rare-keyword",
        "When is the best time to phone Hooli?",
        "cust-hooli-contact",
    ),
    _q(
        "q-stark-onprem",
        "morphology",
        "Does Stark need the onprem version?",
        "cust-stark-onprem",
    ),
    _q(
        "q-wayne-invoices",
        "rare-keyword",
        "Where do we send Wayne Enterprises' invoices?",
        "cust-wayne-billing",
    ),
    # --- science --------------------------------------------------------------------
    _q(
        "q-boiling-altitude",
        "shared-words",
        "Boiling point of water at high altitude, for example on Everest",
        "sci-water-boiling",
    ),
    _q("q-light-vacuum", "shared-words", "Speed of light in a vacuum", "sci-light-speed"),
    _q(
        "q-sun-light",
        "morphology",
        "How long does sun light take to get to earth?",
        "sci-sunlight-time",
    ),
    _q("q-adenine", "rare-keyword", "What does adenine pair with?", "sci-dna-pairs"),
    _q(
        "q-photosynthesize",
        "morphology",
        "What do plants photosynthesize from?",
        "sci-photosynthesis",
    ),
    _q("q-mitochondrion", "morphology", "Mitochondrion function in the cell", "sci-mitochondria"),
    _q(
        "q-biggest-planet",
        "shared-words",
        "What is the biggest planet in our solar system?",
        "sci-jupiter",
    ),
    # --- HR, finance and security ---------------------------------------------------
    _q(
        "q-parental-weeks",
        "shared-words",
        "How many weeks of parental leave do we get?",
        "hr-parental-leave",
    ),
    _q(
        "q-maternity",
        "semantic",
        "What is the maternity and paternity policy?",
        "hr-parental-leave",
    ),
    _q(
        "q-holiday-allowance",
        "shared-words",
        "What is the annual holiday allowance?",
        "hr-vacation",
    ),
    _q(
        "q-sick-note",
        "semantic",
        "Do I need a medical certificate if I'm ill for two days?",
        "hr-sick-leave",
    ),
    _q(
        "q-meal-allowance",
        "shared-words",
        "Daily meal allowance when travelling for work",
        "fin-meal-limit",
    ),
    _q(
        "q-expence-typo",
        "morphology",
        "expence reimbursment limit for food on trips",
        "fin-meal-limit",
    ),
    _q("q-financial-year", "semantic", "When does the financial year begin?", "fin-fiscal-year"),
    _q("q-fiscal-start", "shared-words", "Start date of the fiscal year", "fin-fiscal-year"),
    _q("q-passwrod", "morphology", "Minimum passwrod length policy", "sec-password-length"),
    _q(
        "q-hibp",
        "rare-keyword",
        "Do we check passwords against HaveIBeenPwned?",
        "sec-password-length",
    ),
    # --- history and cooking --------------------------------------------------------
    _q("q-berlin-wall", "shared-words", "When did the Berlin Wall come down?", "hist-berlin-wall"),
    _q("q-apollo-11", "rare-keyword", "Apollo 11 moon landing date", "hist-apollo-11"),
    _q(
        "q-sourdough-water",
        "shared-words",
        "How much water goes into the sourdough?",
        "cook-sourdough",
    ),
    _q("q-sour-dough", "morphology", "sour dough hydration amounts", "cook-sourdough"),
]

FACTS_BY_ID: Final[dict[str, Fact]] = {fact.id: fact for fact in FACTS}
TARGET_IDS: Final[frozenset[str]] = frozenset(i for q in QUERIES for i in q.relevant)
DISTRACTOR_IDS: Final[frozenset[str]] = frozenset(FACTS_BY_ID) - TARGET_IDS
