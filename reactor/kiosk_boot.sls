{#- kiosk/boot: a kiosk came back (power cut, morning wake, replaced PC).
    Sync the pack to it before anything else targets it, and record the boot
    (runner kiosk_restarts.boot: was it a wake of the pack, or an unexpected
    restart?). Kiosk events reach the top master twice (plain, and as
    syndic/<pi>/kiosk/boot): the master's reactor config must match the
    plain tag only, or this runs twice.
    The id (data['id']) is a claim: behind a syndic a kiosk can fire this tag
    with any id. That is acceptable here only because the sync is a harmless,
    idempotent saltutil.sync_all of the pack from the Pi's own file_roots,
    and the runner trusts nothing of the event: it takes the id alone, checks
    it against the inventory and asks that kiosk itself for its boot time;
    each boot is recorded once, however many times it is announced. Never add
    an action to this file that a forged id could abuse. #}
{%- set kiosk_id = data.get('id', '') %}
{%- if kiosk_id and kiosk_id is string and kiosk_id | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})\\Z') %}
sync_pack_on_kiosk_boot:
  local.saltutil.sync_all:
    - tgt: {{ kiosk_id | json }}
    - tgt_type: list

record_kiosk_boot:
  runner.kiosk_restarts.boot:
    - args:
      - kiosk: {{ kiosk_id | json }}
{%- endif %}
