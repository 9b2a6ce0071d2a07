{#- Configure the kiosk_env beacon on a campus Pi from pillar.

    Pillar (per Pi or per campus; every key optional except what you alert on):

      kiosk_env:
        interval: 30
        temperature: [5, 32]
        humidity: [20, 80]
        smoke: true
        gpio: {chip_label: pinctrl-bcm2711, line: 17, active_low: true}
        hysteresis: {temperature: 1.0, humidity: 3.0}
        warmup_s: 120
        retries: 2
        error_after: 3
        report_every: 10
        textfile_dir: /var/lib/prometheus/node-exporter

    Apply with: salt 'pi-*' state.apply kiosk_fleet.env_beacon

    Why beacon.present (save: True) and not a file in minion.d: beacon.present
    goes through the running minion (beacons.add/modify), so the beacon starts
    or changes at once, without restarting the salt-minion that also serves
    this Pi's syndic duties, and Salt runs the beacon's validate() first: a bad
    threshold or a missing DHT11/GPIO chip fails this state with validate()'s
    message instead of a silent log line. save: True then writes
    /etc/salt/minion.d/beacons.conf so the beacon survives a restart. A
    minion.d file would need a minion restart to take effect and is never
    validated. Needs the running salt-minion (not salt-call --local) and the
    pack synced first (salt 'pi-*' saltutil.sync_all: the beacon and the kiosk_env
    module; syncing inside this state would race the minion's beacon refresh). #}
{%- set conf = salt['pillar.get']('kiosk_env', {}) %}
{%- set keys = ['temperature', 'humidity', 'smoke', 'gpio', 'hysteresis', 'warmup_s', 'retries',
                'error_after', 'report_every', 'textfile_dir', 'sysfs_root'] %}
{#- no campus from grains (the minion writes those): without pillar kiosk_env:campus
    the module takes the Pi's campus from its inventory slice in pillar at each poll #}
{%- set campus = conf.get('campus', '') %}

{%- if conf.get('textfile_dir') %}
kiosk_env_textfile_dir:
  file.directory:
    - name: {{ conf['textfile_dir'] | json }}
    - makedirs: True
    - mode: '0755'
    - require_in:
      - beacon: kiosk_env_beacon
{%- endif %}

kiosk_env_beacon:
  beacon.present:
    - name: kiosk_env
    - save: True
    - interval: {{ conf.get('interval', 30) | json }}
{%- for key in keys %}
{%- if conf.get(key) is not none %}
    - {{ key }}: {{ conf[key] | json }}
{%- endif %}
{%- endfor %}
{%- if campus %}
    - campus: {{ campus | json }}
{%- endif %}
