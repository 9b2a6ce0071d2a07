{#- kiosk/boot: a kiosk came back (power cut, morning wake, replaced PC).
    Sync the pack to it before anything else targets it. Kiosk events reach
    the top master twice (plain, and as syndic/<pi>/kiosk/boot): the master's
    reactor config must match the plain tag only, or this runs twice.
    The id comes from the event load, never from the event payload a kiosk
    chose, so a kiosk cannot make the master act on another minion. #}
{%- set kiosk_id = data.get('id', '') %}
{%- if kiosk_id and kiosk_id is string and kiosk_id | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,62})$') %}
sync_pack_on_kiosk_boot:
  local.saltutil.sync_all:
    - tgt: {{ kiosk_id | json }}
    - tgt_type: list
{%- endif %}
