{#- Hosts-file entries for the campus NAT mapping of this kiosk's campus.
    pillar:  kiosk_fleet_changes: {hosts: {<campus>: {<hostname>: <ip>}}}
    extra entries for one run: params='{"hosts": {"name": "ip"}}'
    The campus is the one campus of this minion's pillar slice (the master
    picks it by the authenticated minion id), never the campus grain, which
    the kiosk reports about itself. No slice, no campus: no entries.
    Salt's host state does the editing (Windows and Linux paths; the file
    is the minion option hosts.file). clean: True moves a name that points
    elsewhere instead of adding a second line. #}
{%- set campuses = salt['pillar.get']('kiosk_fleet:campuses', {}) %}
{%- set campus = (campuses | list | first) if campuses | length == 1 else '' %}
{%- set entries = salt['pillar.get']('kiosk_fleet_changes:hosts:' ~ campus, {}) if campus else {} %}
{%- do entries.update(salt['pillar.get']('kiosk_change:hosts', {})) %}
{%- for name, ip in entries | dictsort %}
kiosk_hosts_{{ name }}:
  host.present:
    - name: {{ name | json }}
    - ip: {{ ip | json }}
    - clean: True
{%- else %}
kiosk_hosts_none_for_{{ campus or 'unknown' }}:
  test.succeed_without_changes:
    - name: no hosts entries in pillar for campus {{ campus | json }}
{%- endfor %}
