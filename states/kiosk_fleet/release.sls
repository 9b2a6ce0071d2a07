{#- Kiosks: follow the campus pin of every release in kiosk_release:releases
    (pillar or minion config). Part of the boot state, so a kiosk that was
    off during a rollout catches up when it starts. #}
{%- for name in salt['config.get']('kiosk_release:releases', []) %}
kiosk_release_{{ name }}:
  kiosk_pkg.installed:
    - name: {{ name | json }}
{%- endfor %}
